//! Static checks of the Kafka-backed staging deployment: `compose.yaml`, the
//! `Dockerfile`, `.env.example`, `deploy/` and the docs. No container engine is
//! needed: the stack is checked against
//!
//! - the Compose Specification JSON Schema (vendored: tests/fixtures/compose-spec.json);
//! - the code: the services' real clap `Config` types (every environment variable a
//!   service reads is set or has a default, every variable set is one it reads, and
//!   every value parses), the workspace's crates and binaries;
//! - itself: host names, ports, databases, consumer groups, health checks,
//!   start-up order, `${VARIABLES}` against `.env.example`;
//! - Docker Compose v2 itself (`docker compose config`), which parses, interpolates
//!   and validates without a daemon (deploy/compose-cli.sh finds or fetches it).
//!
//! Each check returns a list of problems; `checks_catch_broken_stacks` breaks the
//! stack in known ways and asserts that the checks notice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the workspace root exists")
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Services that run once and exit (`restart: "no"`): no health check, and
/// dependants wait for them with `service_completed_successfully`.
const ONE_SHOT: &[&str] = &["topics", "cli"];

/// Variables the programs read outside clap: tracing's EnvFilter reads RUST_LOG;
/// every other `std::env::var("...")` in the shipped crates' sources must be
/// listed here (the test finds them) and described in docs/configuration.md.
const READ_OUTSIDE_CLAP: &[&str] = &["RUST_LOG", "KAFKA_DEBUG"];

/// Crates whose sources end up in the image (tests/ does not).
const SHIPPED_CRATES: &[&str] = &[
    "events",
    "platform",
    "user-svc",
    "product-svc",
    "order-svc",
    "inventory-svc",
    "payment-svc",
    "notification-svc",
    "shopctl",
];

/// Where an environment variable is read, as seen from the code.
#[derive(Debug, Clone)]
struct EnvVar {
    name: String,
    /// The flag that takes the same value (`--brokers`), when clap knows it.
    long: Option<String>,
    default: Option<String>,
    /// clap insists on a value (no default, not optional).
    required: bool,
    help: String,
}

/// What a program (a binary of the image) reads from its environment.
#[derive(Debug, Clone)]
struct Program {
    vars: Vec<EnvVar>,
    /// The clap command, when the program's `Config` is reachable from here; lets
    /// the test parse the values compose sets with the real value parsers.
    command: Option<clap::Command>,
}

/// The code side: workspace packages and binaries, and what each program reads.
#[derive(Debug, Clone)]
struct Code {
    packages: BTreeSet<String>,
    binaries: BTreeSet<String>,
    programs: BTreeMap<String, Program>,
    /// `std::env::var("NAME")` in the shipped crates' sources: name -> file.
    outside_clap: BTreeMap<String, String>,
}

/// One `${VAR...}` in compose.yaml.
#[derive(Debug, Clone)]
struct VarUse {
    name: String,
    /// The value used when the variable is unset (`${VAR:-x}`, `${VAR-x}`).
    default: Option<String>,
    /// `${VAR:?message}` or `${VAR?message}`.
    required: bool,
    path: String,
}

/// The deployment files, parsed.
#[derive(Debug, Clone)]
struct Stack {
    /// compose.yaml with YAML merge keys applied, before interpolation.
    raw: Value,
    /// The same, interpolated with the values of .env.example (plus placeholders
    /// for the required secrets it leaves empty): what Compose would run.
    compose: Value,
    uses: Vec<VarUse>,
    env_example: Vec<(String, String)>,
    /// Lines of .env.example, to check that each variable is documented.
    env_example_text: String,
    dockerfile: String,
    /// CREATE DATABASE names in deploy/postgres/init/*.sql.
    init_databases: Vec<String>,
    configuration_md: String,
    staging_md: String,
}

fn load_code() -> Code {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let mut packages = BTreeSet::new();
    let mut binaries = BTreeSet::new();
    for package in metadata["packages"].as_array().expect("packages") {
        packages.insert(package["name"].as_str().expect("package name").to_owned());
        for target in package["targets"].as_array().expect("targets") {
            let is_bin = target["kind"].as_array().expect("kind").iter().any(|k| k == "bin");
            if is_bin {
                binaries.insert(target["name"].as_str().expect("target name").to_owned());
            }
        }
    }

    let mut programs = BTreeMap::new();
    // The six services: their real Config types. A new service crate must be added
    // here (the test says so).
    for (name, command) in [
        ("user-svc", user_svc::Config::command()),
        ("product-svc", product_svc::Config::command()),
        ("order-svc", order_svc::Config::command()),
        ("inventory-svc", inventory_svc::Config::command()),
        ("payment-svc", payment_svc::Config::command()),
        ("notification-svc", notification_svc::Config::command()),
    ] {
        programs.insert(name.to_owned(), Program { vars: clap_env_vars(&command), command: Some(command) });
    }
    let shopctl = shopctl::cli::Cli::command();
    programs.insert("shopctl".to_owned(), Program { vars: clap_env_vars(&shopctl), command: Some(shopctl) });
    // The simulator's arguments are private to its main: read from the source.
    programs.insert(
        "gateway-sim".to_owned(),
        Program { vars: source_env_vars(&[root().join("payment-svc/src/bin/gateway_sim.rs")]), command: None },
    );
    Code { packages, binaries, programs, outside_clap: env_reads_outside_clap() }
}

/// Variables the shipped crates read with `std::env::var`/`var_os`, not through clap.
fn env_reads_outside_clap() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for krate in SHIPPED_CRATES {
        for file in rust_files(&root().join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            for call in ["env::var(\"", "env::var_os(\""] {
                for (at, _) in text.match_indices(call) {
                    let name: String = text[at + call.len()..].chars().take_while(|c| *c != '"').collect();
                    let relative = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
                    found.entry(name).or_insert(relative);
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Every argument that reads an environment variable: the command's own
/// (`top_level`), then its subcommands', once per variable.
fn clap_env_vars(command: &clap::Command) -> Vec<EnvVar> {
    fn collect(command: &clap::Command, top_level: bool, vars: &mut Vec<EnvVar>) {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let name = env.to_string_lossy().into_owned();
            if vars.iter().any(|v| v.name == name) {
                continue;
            }
            let defaults: Vec<String> =
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            vars.push(EnvVar {
                name,
                long: arg.get_long().filter(|_| top_level).map(str::to_owned),
                default: if defaults.is_empty() { None } else { Some(defaults.join(",")) },
                required: arg.is_required_set(),
                help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
            });
        }
        for subcommand in command.get_subcommands() {
            collect(subcommand, false, vars);
        }
    }
    let mut vars = Vec::new();
    collect(command, true, &mut vars);
    vars
}

/// `env = "NAME"` inside `#[arg(...)]` attributes of the given sources, for a
/// binary whose argument struct this test cannot reach.
fn source_env_vars(files: &[PathBuf]) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let mut rest = text.as_str();
        while let Some(start) = rest.find("#[arg(") {
            let attribute = &rest[start..];
            let end = attribute.find(")]").map_or(attribute.len(), |e| e + 2);
            let attribute = &attribute[..end];
            if let Some(at) = attribute.find("env = \"") {
                let name: String = attribute[at + 7..].chars().take_while(|c| *c != '"').collect();
                let default = attribute.contains("default_value").then(|| "(set in the source)".to_owned());
                let required = default.is_none();
                vars.push(EnvVar { name, long: None, default, required, help: String::new() });
            }
            rest = &rest[start + end..];
        }
    }
    vars
}

/// Parses YAML (aliases expanded by the parser) and applies merge keys (`<<`).
fn yaml_to_json(text: &str, what: &str) -> Value {
    let yaml: serde_norway::Value =
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"));
    let json = serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{what} does not map to JSON: {e}"));
    apply_merge_keys(json)
}

/// YAML merge keys, bottom-up so that merged mappings may merge others in turn:
/// keys of the mapping itself win, then the merged mappings in the order listed.
fn apply_merge_keys(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(apply_merge_keys).collect()),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            let mut merged = Vec::new();
            for (key, item) in map {
                let item = apply_merge_keys(item);
                if key == "<<" {
                    match item {
                        Value::Array(sources) => merged.extend(sources),
                        source => merged.push(source),
                    }
                } else {
                    out.insert(key, item);
                }
            }
            for source in merged {
                let Value::Object(source) = source else { panic!("a YAML merge key (<<) must name mappings") };
                for (key, item) in source {
                    out.entry(key).or_insert(item);
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.split_once('=').unwrap_or_else(|| panic!(".env.example: not NAME=value: {line}"));
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// Placeholder values for the secrets .env.example leaves empty on purpose.
fn test_variables(env_example: &[(String, String)]) -> BTreeMap<String, String> {
    env_example
        .iter()
        .map(|(name, value)| {
            let value = if value.is_empty() { format!("test-only-{}", name.to_lowercase()) } else { value.clone() };
            (name.clone(), value)
        })
        .collect()
}

fn load_stack() -> Stack {
    let raw = yaml_to_json(&read("compose.yaml"), "compose.yaml");
    let env_example_text = read(".env.example");
    let env_example = parse_env_file(&env_example_text);
    let mut uses = Vec::new();
    let compose = interpolate_value(&raw, &test_variables(&env_example), &mut uses, "")
        .unwrap_or_else(|e| panic!("compose.yaml does not interpolate with .env.example: {e}"));
    let init_dir = root().join("deploy/postgres/init");
    let mut init_databases = Vec::new();
    let mut init_files: Vec<PathBuf> = std::fs::read_dir(&init_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", init_dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    init_files.sort();
    for file in init_files {
        let text = std::fs::read_to_string(&file).expect("init script is readable");
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("--")) {
            if let Some(rest) = line.strip_prefix("CREATE DATABASE ") {
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                init_databases.push(name);
            }
        }
    }
    Stack {
        raw,
        compose,
        uses,
        env_example,
        env_example_text,
        dockerfile: read("Dockerfile"),
        init_databases,
        configuration_md: read("docs/configuration.md"),
        staging_md: read("docs/staging.md"),
    }
}

// ---------------------------------------------------------------------------
// Compose interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err},
// ${VAR?err}, ${VAR:+alt}, ${VAR+alt}, $VAR, $$), as Compose applies it to every
// string value (never to keys).
// ---------------------------------------------------------------------------

fn interpolate_value(
    value: &Value,
    vars: &BTreeMap<String, String>,
    uses: &mut Vec<VarUse>,
    path: &str,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(interpolate(text, vars, uses, path)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| interpolate_value(item, vars, uses, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, item) in map {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                out.insert(key.clone(), interpolate_value(item, vars, uses, &child)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn interpolate(
    text: &str,
    vars: &BTreeMap<String, String>,
    uses: &mut Vec<VarUse>,
    path: &str,
) -> Result<String, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // Find the matching brace; defaults may nest ${...}.
                let mut depth = 1;
                let mut j = i + 2;
                while j < chars.len() && depth > 0 {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if depth != 0 {
                    return Err(format!("{path}: unterminated ${{ in {text:?}"));
                }
                let inner: String = chars[i + 2..j - 1].iter().collect();
                out.push_str(&expand(&inner, vars, uses, path)?);
                i = j;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let name: String = chars[i + 1..].iter().take_while(|c| is_name_char(**c)).collect();
                i += 1 + name.chars().count();
                out.push_str(&expand(&name, vars, uses, path)?);
            }
            _ => {
                return Err(format!("{path}: a lone '$' in {text:?} (write $$ for a literal dollar)"));
            }
        }
    }
    Ok(out)
}

fn expand(inner: &str, vars: &BTreeMap<String, String>, uses: &mut Vec<VarUse>, path: &str) -> Result<String, String> {
    let name: String = inner.chars().take_while(|c| is_name_char(*c)).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{path}: invalid variable reference ${{{inner}}}"));
    }
    let rest = &inner[name.len()..];
    let value = vars.get(&name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let current = value.cloned().unwrap_or_default();
    let (operator, argument) = ["-", ":-", "?", ":?", "+", ":+"]
        .iter()
        .filter(|op| rest.starts_with(**op))
        .max_by_key(|op| op.len())
        .map_or(("", ""), |op| (*op, &rest[op.len()..]));
    if operator.is_empty() && !rest.is_empty() {
        return Err(format!("{path}: unsupported variable syntax ${{{inner}}}"));
    }
    let (value, default, required) = match operator {
        "" => (current, None, false),
        ":-" | "-" => {
            let default = interpolate(argument, vars, uses, path)?;
            let use_default = if operator == ":-" { !non_empty } else { !set };
            (if use_default { default.clone() } else { current }, Some(default), false)
        }
        ":?" | "?" => {
            let missing = if operator == ":?" { !non_empty } else { !set };
            if missing {
                return Err(format!("{path}: required variable {name} is missing a value: {argument}"));
            }
            (current, None, true)
        }
        _ => {
            let alternative = interpolate(argument, vars, uses, path)?;
            let use_alternative = if operator == ":+" { non_empty } else { set };
            (if use_alternative { alternative } else { String::new() }, None, false)
        }
    };
    uses.push(VarUse { name, default, required, path: path.to_owned() });
    Ok(value)
}

// ---------------------------------------------------------------------------
// Helpers over the compose model
// ---------------------------------------------------------------------------

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_object()
        .map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A service's environment as a map, from either the map or the list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v).unwrap_or_default())).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The program a service runs: the entrypoint's first word, else the command's.
fn program(service: &Value) -> Option<String> {
    let entrypoint = string_list(&service["entrypoint"]);
    let command = string_list(&service["command"]);
    entrypoint.first().or(command.first()).cloned()
}

/// `depends_on` as name -> condition (the short list form means service_started).
fn depends_on(service: &Value) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Value::Object(map) => map
            .iter()
            .map(|(name, spec)| (name.clone(), spec["condition"].as_str().unwrap_or("service_started").to_owned()))
            .collect(),
        Value::Array(items) => {
            items.iter().filter_map(Value::as_str).map(|n| (n.to_owned(), "service_started".to_owned())).collect()
        }
        _ => BTreeMap::new(),
    }
}

fn app_image(stack: &Stack) -> Option<String> {
    services(&stack.compose)
        .values()
        .find(|s| s.get("build").is_some())
        .and_then(|s| s["image"].as_str().map(str::to_owned))
}

/// Services that run the image built from ./Dockerfile.
fn app_services(stack: &Stack) -> BTreeMap<String, Value> {
    let image = app_image(stack);
    services(&stack.compose)
        .into_iter()
        .filter(|(_, s)| s.get("build").is_some() || (image.is_some() && s["image"].as_str() == image.as_deref()))
        .collect()
}

fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':').and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
}

/// host and port of `scheme://host:port/...` or `host:port`.
fn host_port(address: &str) -> Option<(String, u16)> {
    let without_scheme = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = without_scheme.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

fn healthcheck_words(service: &Value) -> Vec<String> {
    string_list(&service["healthcheck"]["test"])
}

/// The Dockerfile's `ARG BINARIES="..."`: every binary the image carries.
fn dockerfile_binaries(dockerfile: &str) -> Option<BTreeSet<String>> {
    let line = dockerfile.lines().map(str::trim).find(|l| l.starts_with("ARG BINARIES="))?;
    let value = line.trim_start_matches("ARG BINARIES=").trim_matches('"');
    Some(value.split_whitespace().map(str::to_owned).collect())
}

/// Instructions of each stage: (FROM line, instruction lines with continuations joined).
fn dockerfile_stages(dockerfile: &str) -> Vec<(String, Vec<String>)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        if trimmed.is_empty() && current.is_empty() {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for instruction in joined {
        if instruction.to_uppercase().starts_with("FROM ") {
            stages.push((instruction, Vec::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push(instruction);
        }
    }
    stages
}

/// ENV set by the runtime stage of the Dockerfile.
fn image_env(dockerfile: &str) -> BTreeSet<String> {
    let stages = dockerfile_stages(dockerfile);
    let Some((_, body)) = stages.last() else { return BTreeSet::new() };
    body.iter()
        .filter_map(|i| i.strip_prefix("ENV "))
        .flat_map(|rest| rest.split_whitespace().filter_map(|w| w.split_once('=').map(|(k, _)| k.to_owned())))
        .collect()
}

// ---------------------------------------------------------------------------
// The checks. Each returns its problems; none means the stack passed.
// ---------------------------------------------------------------------------

fn schema_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read("tests/fixtures/compose-spec.json")).expect("the schema is JSON");
    jsonschema::draft7::new(&schema).expect("the Compose Specification schema compiles")
}

fn check_schema(stack: &Stack, validator: &jsonschema::Validator) -> Vec<String> {
    let mut problems: Vec<String> =
        validator.iter_errors(&stack.compose).map(|e| format!("schema: at {}: {e}", e.instance_path())).collect();
    if stack.raw.get("version").is_some() {
        problems.push("compose.yaml has a `version:` key; the Compose Specification needs none".to_owned());
    }
    problems
}

fn check_service_crates(stack: &Stack, code: &Code) -> Vec<String> {
    let mut problems = Vec::new();
    let compose_services = services(&stack.compose);
    for package in code.packages.iter().filter(|p| p.ends_with("-svc")) {
        if !compose_services.contains_key(package) {
            problems.push(format!("workspace service crate {package} has no compose service of that name"));
        }
        if !code.programs.contains_key(package) {
            problems.push(format!(
                "workspace service crate {package} is not known to tests/tests/compose.rs: add its Config to load_code()"
            ));
        }
    }
    let built = app_services(stack);
    for (name, service) in &compose_services {
        if name.ends_with("-svc") && program(service).as_deref() != Some(name) {
            problems.push(format!("service {name} runs {:?}, not its own binary {name}", program(service)));
        }
        if name.ends_with("-svc") && !built.contains_key(name) {
            problems.push(format!("service {name} does not run the image built from ./Dockerfile"));
        }
    }
    problems
}

fn check_environment(stack: &Stack, code: &Code) -> Vec<String> {
    let mut problems = Vec::new();
    let from_image = image_env(&stack.dockerfile);
    let mut checked = BTreeSet::new();
    for (name, service) in app_services(stack) {
        let Some(binary) = program(&service) else {
            problems.push(format!("service {name} names no program (command or entrypoint)"));
            continue;
        };
        checked.insert(binary.clone());
        let Some(known) = code.programs.get(&binary) else {
            problems.push(format!("service {name} runs {binary}, which tests/tests/compose.rs does not know"));
            continue;
        };
        let env = environment(&service);
        // A setting without a default is either optional (an `Option`: unset has a
        // documented meaning; the ones staging needs are checked in check_wiring)
        // or required by clap, and then it must be set.
        for var in &known.vars {
            let set = env.get(&var.name).is_some_and(|v| !v.is_empty()) || from_image.contains(&var.name);
            if var.required && var.default.is_none() && !set {
                problems.push(format!(
                    "service {name}: {binary} reads {} (required, no default), which is not set",
                    var.name
                ));
            }
        }
        for key in env.keys() {
            if !known.vars.iter().any(|v| &v.name == key) && !READ_OUTSIDE_CLAP.contains(&key.as_str()) {
                problems.push(format!("service {name}: {key} is set but {binary} does not read it (a typo?)"));
            }
        }
        // The values must parse, with the program's real value parsers, together
        // with the arguments compose passes (e.g. `topics create --partitions 6`).
        if let Some(command) = &known.command {
            let mut argv = vec![binary.clone()];
            for var in &known.vars {
                if let (Some(value), Some(long)) = (env.get(&var.name), &var.long) {
                    argv.push(format!("--{long}={value}"));
                }
            }
            let mut words = string_list(&service["entrypoint"]);
            words.extend(string_list(&service["command"]));
            argv.extend(words.into_iter().skip(1));
            match command.clone().try_get_matches_from(&argv) {
                Ok(_) => {}
                Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelp => {}
                Err(error) => {
                    let error = error.to_string();
                    let first = error.lines().next().unwrap_or_default();
                    problems.push(format!("service {name}: {binary} rejects its compose command line: {first}"));
                }
            }
        }
    }
    for binary in code.programs.keys() {
        if !checked.contains(binary) {
            problems.push(format!("no compose service runs {binary}, so its environment went unchecked"));
        }
    }
    problems
}

fn check_wiring(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let all = services(&stack.compose);
    let Some(kafka) = all.get("kafka") else { return vec!["no kafka service".to_owned()] };
    let Some(postgres) = all.get("postgres") else { return vec!["no postgres service".to_owned()] };
    let kafka_env = environment(kafka);
    let postgres_env = environment(postgres);

    // Kafka: official image, KRaft combined node, no auto-created topics.
    if !kafka["image"].as_str().is_some_and(|i| i.starts_with("apache/kafka:3.9")) {
        problems.push(format!("kafka image is {}, expected apache/kafka:3.9.x", kafka["image"]));
    }
    let roles = kafka_env.get("KAFKA_PROCESS_ROLES").cloned().unwrap_or_default();
    if !(roles.contains("broker") && roles.contains("controller")) {
        problems.push(format!("kafka: KAFKA_PROCESS_ROLES is {roles:?}, expected broker,controller (KRaft)"));
    }
    if kafka_env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE").map(String::as_str) != Some("false") {
        problems.push("kafka: KAFKA_AUTO_CREATE_TOPICS_ENABLE must be \"false\"".to_owned());
    }
    let advertised = kafka_env.get("KAFKA_ADVERTISED_LISTENERS").cloned().unwrap_or_default();
    let internal = advertised.split(',').find_map(|l| l.strip_prefix("INTERNAL://")).map(str::to_owned);
    let Some(internal) = internal else {
        problems.push(format!("kafka: no INTERNAL listener in KAFKA_ADVERTISED_LISTENERS {advertised:?}"));
        return problems;
    };
    let database_user = postgres_env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".to_owned());
    let database_password = postgres_env.get("POSTGRES_PASSWORD").cloned().unwrap_or_default();
    if !postgres["image"].as_str().is_some_and(|i| i.starts_with("postgres:16")) {
        problems.push(format!("postgres image is {}, expected postgres:16", postgres["image"]));
    }
    let init_mounted = string_list(&postgres["volumes"]).iter().any(|v| v.ends_with(":/docker-entrypoint-initdb.d:ro"))
        || postgres["volumes"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|v| v["target"] == "/docker-entrypoint-initdb.d"));
    if !init_mounted {
        problems.push("postgres: deploy/postgres/init is not mounted at /docker-entrypoint-initdb.d".to_owned());
    }

    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    let mut databases: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in app_services(stack) {
        let env = environment(&service);
        if let Some(brokers) = env.get("KAFKA_BROKERS") {
            if brokers != &internal {
                problems.push(format!(
                    "service {name}: KAFKA_BROKERS={brokers}, but Kafka advertises {internal} to containers"
                ));
            }
        } else if program(&service).is_some_and(|p| p != "gateway-sim") {
            problems.push(format!("service {name}: KAFKA_BROKERS is not set (the default is 127.0.0.1)"));
        }
        if !name.ends_with("-svc") {
            continue;
        }
        // One database per service, created at start-up, reached as the postgres user.
        let url = env.get("DATABASE_URL").cloned().unwrap_or_default();
        let expected_db = name.replace('-', "_");
        let expected = format!("postgres://{database_user}:{database_password}@postgres:5432/{expected_db}");
        if url != expected {
            problems.push(format!("service {name}: DATABASE_URL is {url:?}, expected {expected:?}"));
        }
        if !stack.init_databases.contains(&expected_db) {
            problems
                .push(format!("service {name}: database {expected_db} is not created by deploy/postgres/init/*.sql"));
        }
        if let Some(other) = databases.insert(url.clone(), name.clone()) {
            problems.push(format!("services {other} and {name} share the database {url}"));
        }
        // Own consumer group (and so own dead-letter topic <group>.dlq).
        let group = env.get("GROUP_ID").cloned().unwrap_or_default();
        if group != name {
            problems.push(format!("service {name}: GROUP_ID is {group:?}; expected {name} (its DLQ is {name}.dlq)"));
        }
        if let Some(other) = groups.insert(group.clone(), name.clone()) {
            problems.push(format!("services {other} and {name} share the consumer group {group}"));
        }
        // HTTP: health check and published port hit the address the service listens on.
        let http_port = env.get("HTTP_ADDR").and_then(|a| port_of(a));
        let http_host_ok = env.get("HTTP_ADDR").is_some_and(|a| a.starts_with("0.0.0.0:"));
        if !http_host_ok {
            problems.push(format!("service {name}: HTTP_ADDR must listen on 0.0.0.0 (got {:?})", env.get("HTTP_ADDR")));
        }
        let check = healthcheck_words(&service).join(" ");
        let expected_url = http_port.map(|p| format!("http://127.0.0.1:{p}/readyz"));
        if !expected_url.as_ref().is_some_and(|u| check.contains(u.as_str())) {
            problems.push(format!("service {name}: health check {check:?} does not hit {expected_url:?}"));
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            let target = scalar(port)
                .and_then(|p| port_of(&p))
                .or_else(|| port["target"].as_u64().and_then(|t| u16::try_from(t).ok()));
            if target != http_port {
                problems.push(format!("service {name}: published port {port} does not target HTTP port {http_port:?}"));
            }
        }
    }
    for expected in stack.init_databases.iter() {
        if !all.contains_key(&expected.replace('_', "-")) {
            problems.push(format!("deploy/postgres/init creates {expected}, which no service uses"));
        }
    }

    // The payment gateway: payment-svc reaches the simulator where it listens.
    if let (Some(gateway), Some(payment)) = (all.get("gateway"), all.get("payment-svc")) {
        let listen = environment(gateway).get("GATEWAY_LISTEN").cloned().unwrap_or_default();
        let url = environment(payment).get("PAYMENT_GATEWAY_URL").cloned().unwrap_or_default();
        match (port_of(&listen), host_port(&url)) {
            (Some(port), Some((host, url_port))) if host == "gateway" && url_port == port => {}
            _ => {
                problems.push(format!("PAYMENT_GATEWAY_URL {url:?} does not reach the gateway listening on {listen:?}"))
            }
        }
        if !listen.starts_with("0.0.0.0:") {
            problems.push(format!("gateway: GATEWAY_LISTEN must listen on 0.0.0.0 (got {listen:?})"));
        }
        let check = healthcheck_words(gateway).join(" ");
        if !port_of(&listen).is_some_and(|p| check.contains(&format!("http://127.0.0.1:{p}/healthz"))) {
            problems.push(format!("gateway: health check {check:?} does not hit /healthz on {listen:?}"));
        }
    } else {
        problems.push("no gateway service (payment gateway simulator) or no payment-svc".to_owned());
    }

    // Topics: created with the partitions the services expect.
    match all.get("topics") {
        Some(topics) => {
            let command = string_list(&topics["command"]);
            let partitions = command.iter().position(|w| w == "--partitions").and_then(|i| command.get(i + 1)).cloned();
            if !command.starts_with(&["shopctl".to_owned(), "topics".to_owned(), "create".to_owned()]) {
                problems.push(format!("topics: command {command:?} is not `shopctl topics create ...`"));
            }
            for (name, service) in app_services(stack).iter().filter(|(n, _)| n.ends_with("-svc")) {
                let theirs = environment(service).get("TOPIC_PARTITIONS").cloned();
                if theirs != partitions {
                    problems.push(format!(
                        "service {name}: TOPIC_PARTITIONS {theirs:?} differs from the topics job's {partitions:?}"
                    ));
                }
            }
        }
        None => problems.push("no `topics` job".to_owned()),
    }
    problems
}

fn check_health_and_restart(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in services(&stack.compose) {
        let restart = service["restart"].as_str().unwrap_or_default().to_owned();
        if ONE_SHOT.contains(&name.as_str()) {
            if restart != "no" {
                problems.push(format!("one-shot service {name}: restart must be \"no\" (got {restart:?})"));
            }
            continue;
        }
        if !matches!(restart.as_str(), "unless-stopped" | "always") {
            problems.push(format!("service {name}: restart is {restart:?}; expected unless-stopped"));
        }
        let test = healthcheck_words(&service);
        let disabled = service["healthcheck"]["disable"] == json!(true) || test.first().is_some_and(|w| w == "NONE");
        if test.is_empty() || disabled {
            problems.push(format!("service {name}: no health check"));
        }
        if test.iter().any(|w| w == "curl" || w.starts_with("curl ")) && app_services(stack).contains_key(&name) {
            let runtime =
                dockerfile_stages(&stack.dockerfile).pop().map(|(_, body)| body.join("\n")).unwrap_or_default();
            if !runtime.contains("curl") {
                problems.push(format!("service {name}: its health check uses curl, which the runtime image lacks"));
            }
        }
    }
    problems
}

fn check_depends_on(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let all = services(&stack.compose);
    let required =
        [("postgres", "service_healthy"), ("kafka", "service_healthy"), ("topics", "service_completed_successfully")];
    for (name, service) in &all {
        let deps = depends_on(service);
        if name.ends_with("-svc") {
            for (dependency, condition) in required {
                if deps.get(dependency).map(String::as_str) != Some(condition) {
                    problems.push(format!("service {name}: needs depends_on {dependency}: condition: {condition}"));
                }
            }
        }
        for (dependency, condition) in &deps {
            let Some(target) = all.get(dependency) else {
                problems.push(format!("service {name} depends on undefined service {dependency}"));
                continue;
            };
            match condition.as_str() {
                "service_healthy" if target.get("healthcheck").is_none() => problems
                    .push(format!("service {name} waits for {dependency} to be healthy, which has no health check")),
                "service_completed_successfully" if target["restart"].as_str() != Some("no") => {
                    problems.push(format!("service {name} waits for {dependency} to complete, which is not a one-shot"))
                }
                "service_healthy" | "service_completed_successfully" | "service_started" => {}
                other => problems.push(format!("service {name}: unknown depends_on condition {other}")),
            }
            if service.get("profiles").is_none() && target.get("profiles").is_some() {
                problems.push(format!("service {name} depends on {dependency}, which only runs under a profile"));
            }
        }
        // Whatever a service talks to (host names in its environment) it waits for.
        for value in environment(service).values() {
            for address in value.split(',') {
                let Some((host, _)) = host_port(address) else { continue };
                if host != *name && all.contains_key(&host) {
                    let condition = deps.get(&host).map(String::as_str);
                    if condition != Some("service_healthy") {
                        problems.push(format!("service {name} talks to {host} but does not wait for it to be healthy"));
                    }
                }
            }
        }
    }
    match all.get("topics").map(depends_on) {
        Some(deps) if deps.get("kafka").map(String::as_str) == Some("service_healthy") => {}
        _ => problems.push("topics job: needs depends_on kafka: condition: service_healthy".to_owned()),
    }
    problems
}

fn check_variables(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let documented: BTreeMap<&str, &str> = stack.env_example.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut seen = BTreeSet::new();
    for (name, _) in &stack.env_example {
        if !seen.insert(name.as_str()) {
            problems.push(format!(".env.example lists {name} twice"));
        }
    }
    // Each variable sits in a block of lines right under a comment that explains it.
    let mut under_comment = false;
    for line in stack.env_example_text.lines().map(str::trim) {
        if line.is_empty() {
            under_comment = false;
        } else if line.starts_with('#') {
            under_comment = true;
        } else if !under_comment {
            let name = line.split('=').next().unwrap_or(line);
            problems.push(format!(".env.example: {name} has no comment above it"));
        }
    }
    let mut defaults: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for var in &stack.uses {
        match documented.get(var.name.as_str()) {
            None => problems.push(format!(
                "compose.yaml uses ${{{}}} (at {}), which .env.example does not list",
                var.name, var.path
            )),
            Some(value) => {
                if let Some(default) = &var.default {
                    defaults.entry(var.name.as_str()).or_default().insert(default.as_str());
                    if value != default {
                        problems.push(format!(
                            ".env.example sets {}={value}, but compose.yaml defaults it to {default:?} at {}",
                            var.name, var.path
                        ));
                    }
                }
                if value.is_empty() && !var.required && var.default.is_none() {
                    problems.push(format!(
                        "{} is empty in .env.example and neither required nor defaulted at {}",
                        var.name, var.path
                    ));
                }
            }
        }
    }
    for (name, set) in defaults {
        if set.len() > 1 {
            problems.push(format!("compose.yaml gives {name} different defaults: {set:?}"));
        }
    }
    let used: BTreeSet<&str> = stack.uses.iter().map(|u| u.name.as_str()).collect();
    for (name, value) in &stack.env_example {
        if !used.contains(name.as_str()) {
            problems.push(format!(".env.example lists {name}, which compose.yaml does not use"));
        }
        // A secret left empty in .env.example must stop `docker compose` until set.
        if value.is_empty() && !stack.uses.iter().any(|u| &u.name == name && u.required) {
            problems.push(format!(".env.example leaves {name} empty but compose.yaml does not require it"));
        }
    }
    // Exactly as a newcomer would run it: `cp .env.example .env` without editing.
    let as_shipped: BTreeMap<String, String> = stack.env_example.iter().cloned().collect();
    let required_empty: Vec<&str> =
        stack.env_example.iter().filter(|(_, v)| v.is_empty()).map(|(k, _)| k.as_str()).collect();
    if !required_empty.is_empty() {
        match interpolate_value(&stack.raw, &as_shipped, &mut Vec::new(), "") {
            Ok(_) => {
                problems.push(format!("compose.yaml interpolates with {required_empty:?} empty; they must be required"))
            }
            Err(error) if !required_empty.iter().any(|name| error.contains(name)) => {
                problems.push(format!("with .env.example as shipped, compose fails for another reason: {error}"))
            }
            Err(_) => {}
        }
    }
    problems
}

fn check_dockerfile(stack: &Stack, code: &Code) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(binaries) = dockerfile_binaries(&stack.dockerfile) else {
        return vec!["Dockerfile: no `ARG BINARIES=\"...\"` line listing the binaries it builds".to_owned()];
    };
    for binary in &binaries {
        if !code.binaries.contains(binary) {
            problems.push(format!("Dockerfile builds {binary}, which is no binary target of the workspace"));
        }
    }
    let mut run = BTreeSet::new();
    for (name, service) in app_services(stack) {
        if let Some(binary) = program(&service) {
            if !binaries.contains(&binary) {
                problems.push(format!("service {name} runs {binary}, which the Dockerfile does not build"));
            }
            run.insert(binary);
        }
    }
    for binary in binaries.difference(&run) {
        problems.push(format!("Dockerfile builds {binary}, which no compose service runs"));
    }
    for package in code.packages.iter().filter(|p| p.ends_with("-svc")) {
        if !binaries.contains(package) {
            problems.push(format!("Dockerfile does not build the service binary {package}"));
        }
    }
    let stages = dockerfile_stages(&stack.dockerfile);
    let builder = stages.first().map(|(from, body)| (from.clone(), body.join("\n")));
    match builder {
        Some((from, body)) => {
            if !from.contains("rust:") {
                problems.push(format!("Dockerfile: the build stage is {from:?}, expected the official rust image"));
            }
            if !body.contains("cargo build --release --locked") {
                problems.push("Dockerfile: the build stage does not run `cargo build --release --locked`".to_owned());
            }
            if !body.contains("--mount=type=cache,") {
                problems.push("Dockerfile: no BuildKit cache mount for the cargo registry".to_owned());
            }
        }
        None => problems.push("Dockerfile: no FROM".to_owned()),
    }
    match stages.last() {
        Some((from, body)) if stages.len() > 1 => {
            let body = body.join("\n");
            if !from.contains("debian:") || !from.contains("-slim") {
                problems.push(format!("Dockerfile: the runtime stage is {from:?}, expected debian:<release>-slim"));
            }
            if !body.contains("ca-certificates") {
                problems.push("Dockerfile: the runtime stage does not install ca-certificates".to_owned());
            }
            if !body.contains("COPY --from=builder") {
                problems.push("Dockerfile: the runtime stage copies nothing from the builder".to_owned());
            }
            let user = body.lines().filter_map(|l| l.strip_prefix("USER ")).next_back().map(str::trim);
            if user.is_none_or(|u| u == "root" || u == "0" || u.starts_with("0:") || u.starts_with("root:")) {
                problems.push(format!("Dockerfile: the runtime stage runs as {user:?}; expected a non-root user"));
            }
        }
        _ => problems.push("Dockerfile: expected a multi-stage build (builder + runtime)".to_owned()),
    }
    // One image for everything: every service that builds, builds the same thing.
    let image = app_image(stack);
    for (name, service) in services(&stack.compose) {
        if let Some(build) = service.get("build") {
            if service["image"].as_str() != image.as_deref() {
                problems.push(format!("service {name} builds an image other than {image:?}"));
            }
            let context = build["context"].as_str().or(build.as_str()).unwrap_or_default();
            let file = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            if context != "." || file != "Dockerfile" {
                problems.push(format!("service {name} builds {context}/{file}, not ./Dockerfile"));
            }
        }
    }
    problems
}

fn check_ports(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in services(&stack.compose) {
        for port in service["ports"].as_array().into_iter().flatten() {
            let Some(text) = scalar(port) else { continue };
            let parts: Vec<&str> = text.split(':').collect();
            let host = match parts.as_slice() {
                [ip, host, _] => format!("{ip}:{host}"),
                [host, _] => format!("0.0.0.0:{host}"),
                _ => continue,
            };
            if let Some(other) = published.insert(host.clone(), name.clone()) {
                problems.push(format!("services {other} and {name} both publish {host}"));
            }
        }
    }
    problems
}

fn check_docs(stack: &Stack, code: &Code) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, file) in &code.outside_clap {
        if !READ_OUTSIDE_CLAP.contains(&name.as_str()) {
            problems.push(format!(
                "{file} reads {name} with std::env::var; add it to READ_OUTSIDE_CLAP in tests/tests/compose.rs and describe it"
            ));
        }
    }
    for name in READ_OUTSIDE_CLAP {
        if !stack.configuration_md.contains(&format!("`{name}`")) {
            problems.push(format!("docs/configuration.md does not describe {name} (read outside clap)"));
        }
    }
    for (binary, program) in &code.programs {
        if !stack.configuration_md.contains(&format!("## {binary}")) && !binary.ends_with("-svc") {
            problems.push(format!("docs/configuration.md has no section for {binary}"));
        }
        for var in &program.vars {
            if !stack.configuration_md.contains(&format!("`{}`", var.name)) {
                problems.push(format!("docs/configuration.md does not describe {} (read by {binary})", var.name));
            }
            if let Some(default) = var.default.as_ref().filter(|_| program.command.is_some()) {
                let (name, default) = (format!("`{}`", var.name), format!("`{default}`"));
                if !stack.configuration_md.lines().any(|row| row.contains(&name) && row.contains(&default)) {
                    problems.push(format!(
                        "docs/configuration.md: {} should show its default {default} on its row",
                        var.name
                    ));
                }
            }
        }
    }
    for (name, _) in &stack.env_example {
        if !stack.configuration_md.contains(&format!("`{name}`")) {
            problems.push(format!("docs/configuration.md does not describe the compose variable {name}"));
        }
    }
    for command in [
        "docker compose build",
        "docker compose up -d",
        "docker compose ps",
        "docker compose run --rm cli order place",
        "docker compose run --rm cli order timeline",
        "docker compose run --rm cli dlq list order-svc",
        "docker compose run --rm cli dlq replay order-svc --dry-run",
        "docker compose down",
    ] {
        if !stack.staging_md.contains(command) {
            problems.push(format!("docs/staging.md does not show `{command}`"));
        }
    }
    problems
}

fn all_problems(stack: &Stack, code: &Code, validator: &jsonschema::Validator) -> Vec<String> {
    let mut problems = check_schema(stack, validator);
    problems.extend(check_service_crates(stack, code));
    problems.extend(check_environment(stack, code));
    problems.extend(check_wiring(stack));
    problems.extend(check_health_and_restart(stack));
    problems.extend(check_depends_on(stack));
    problems.extend(check_variables(stack));
    problems.extend(check_dockerfile(stack, code));
    problems.extend(check_ports(stack));
    problems.extend(check_docs(stack, code));
    problems
}

fn assert_no_problems(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn compose_yaml_matches_the_compose_specification_schema() {
    assert_no_problems("schema", check_schema(&load_stack(), &schema_validator()));
}

#[test]
fn every_service_crate_is_deployed_with_the_environment_its_config_reads() {
    let (stack, code) = (load_stack(), load_code());
    let mut problems = check_service_crates(&stack, &code);
    problems.extend(check_environment(&stack, &code));
    assert_no_problems("services and environment", problems);
}

#[test]
fn services_reach_kafka_postgres_and_the_gateway_where_they_listen() {
    assert_no_problems("wiring", check_wiring(&load_stack()));
}

#[test]
fn services_have_health_checks_restart_policies_and_start_in_order() {
    let stack = load_stack();
    let mut problems = check_health_and_restart(&stack);
    problems.extend(check_depends_on(&stack));
    problems.extend(check_ports(&stack));
    assert_no_problems("health, restart, depends_on, ports", problems);
}

#[test]
fn every_compose_variable_is_documented_in_env_example() {
    assert_no_problems("variables", check_variables(&load_stack()));
}

#[test]
fn the_dockerfile_builds_every_binary_compose_runs() {
    assert_no_problems("Dockerfile", check_dockerfile(&load_stack(), &load_code()));
}

#[test]
fn the_docs_describe_every_setting_and_the_staging_workflow() {
    assert_no_problems("docs", check_docs(&load_stack(), &load_code()));
}

/// The checks above are only worth something if they fail on a broken stack.
#[test]
fn checks_catch_broken_stacks() {
    let (stack, code, validator) = (load_stack(), load_code(), schema_validator());
    assert_no_problems("the stack as committed", all_problems(&stack, &code, &validator));

    type Breakage = (&'static str, &'static str, fn(&mut Stack, &mut Code));
    let breakages: &[Breakage] = &[
        ("unknown key", "schema", |s, _| s.compose["services"]["order-svc"]["healthchek"] = json!({})),
        ("version key", "`version:`", |s, _| {
            s.raw["version"] = json!("3.9");
        }),
        ("missing service", "no compose service", |s, _| {
            s.compose["services"].as_object_mut().expect("services").remove("inventory-svc");
        }),
        ("misspelt variable", "KAFKA_BROKER is set", |s, _| {
            let env = &mut s.compose["services"]["inventory-svc"]["environment"];
            let value = env["KAFKA_BROKERS"].take();
            env.as_object_mut().expect("map").remove("KAFKA_BROKERS");
            env["KAFKA_BROKER"] = value;
        }),
        ("database not set", "DATABASE_URL is \"\"", |s, _| {
            s.compose["services"]["user-svc"]["environment"].as_object_mut().expect("map").remove("DATABASE_URL");
        }),
        ("unparsable value", "rejects its compose command line", |s, _| {
            s.compose["services"]["payment-svc"]["environment"]["PAYMENT_DEADLINE"] = json!("five minutes");
        }),
        ("shared database", "DATABASE_URL", |s, _| {
            let url = s.compose["services"]["user-svc"]["environment"]["DATABASE_URL"].clone();
            s.compose["services"]["order-svc"]["environment"]["DATABASE_URL"] = url;
        }),
        ("wrong broker address", "Kafka advertises", |s, _| {
            s.compose["services"]["order-svc"]["environment"]["KAFKA_BROKERS"] = json!("localhost:9094");
        }),
        ("gateway unreachable", "PAYMENT_GATEWAY_URL", |s, _| {
            s.compose["services"]["payment-svc"]["environment"]["PAYMENT_GATEWAY_URL"] = json!("http://127.0.0.1:8090");
        }),
        ("no health check", "no health check", |s, _| {
            s.compose["services"]["order-svc"].as_object_mut().expect("map").remove("healthcheck");
        }),
        ("no restart policy", "restart is", |s, _| {
            s.compose["services"]["notification-svc"].as_object_mut().expect("map").remove("restart");
        }),
        ("weak start-up order", "topics: condition: service_completed_successfully", |s, _| {
            s.compose["services"]["product-svc"]["depends_on"]["topics"]["condition"] = json!("service_started");
        }),
        ("gateway not awaited", "talks to gateway", |s, _| {
            s.compose["services"]["payment-svc"]["depends_on"].as_object_mut().expect("map").remove("gateway");
        }),
        ("undocumented variable", "does not list", |s, _| s.env_example.retain(|(k, _)| k != "HOST_BIND")),
        ("uncommented variable", "no comment above it", |s, _| {
            s.env_example_text = s.env_example_text.replace("\nHOST_BIND=", "\n\nHOST_BIND=");
        }),
        ("stale default", "defaults it to", |s, _| {
            for (k, v) in &mut s.env_example {
                if k == "TOPIC_PARTITIONS" {
                    *v = "12".to_owned();
                }
            }
        }),
        ("binary not built", "does not build", |s, _| {
            s.dockerfile = s.dockerfile.replace(" gateway-sim shopctl\"", " gateway-sim\"");
        }),
        ("root runtime", "non-root", |s, _| s.dockerfile = s.dockerfile.replace("USER shop:shop", "USER root")),
        ("port clash", "both publish", |s, _| {
            let ports = s.compose["services"]["user-svc"]["ports"].clone();
            s.compose["services"]["product-svc"]["ports"] = ports;
        }),
        ("undocumented setting", "does not describe", |s, _| {
            s.configuration_md = s.configuration_md.replace("`BREAKER_WINDOW`", "BREAKER_WINDOW");
        }),
        ("new required setting", "reads NEW_SETTING (required, no default)", |_, c| {
            let var = EnvVar {
                name: "NEW_SETTING".to_owned(),
                long: Some("new-setting".to_owned()),
                default: None,
                required: true,
                help: String::new(),
            };
            c.programs.get_mut("order-svc").expect("order-svc").vars.push(var);
        }),
        ("variable read outside clap", "add it to READ_OUTSIDE_CLAP", |_, c| {
            c.outside_clap.insert("SOME_NEW_KNOB".to_owned(), "platform/src/lib.rs".to_owned());
        }),
    ];
    for (what, expected, breakage) in breakages {
        let (mut broken, mut broken_code) = (stack.clone(), code.clone());
        breakage(&mut broken, &mut broken_code);
        let problems = all_problems(&broken, &broken_code, &validator);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breakage {what:?} was not caught (wanted a problem containing {expected:?}); problems: {problems:#?}"
        );
    }
}

fn unescape_dollars(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("$$", "$")),
        Value::Array(items) => Value::Array(items.into_iter().map(unescape_dollars).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, unescape_dollars(v))).collect()),
        other => other,
    }
}

/// Prints the settings reference of docs/configuration.md from the code:
/// `cargo test -p saga-tests --test compose -- --ignored --nocapture print_settings`.
#[test]
#[ignore = "prints the settings tables for docs/configuration.md"]
fn print_settings_reference() {
    for (binary, program) in load_code().programs {
        println!("\n### {binary}\n\n| Variable | Flag | Default | What it does |\n| --- | --- | --- | --- |");
        for var in program.vars {
            let flag = var.long.map(|l| format!("`--{l}`")).unwrap_or_default();
            let default = match (var.default, var.required) {
                (Some(default), _) => format!("`{default}`"),
                (None, true) => "(required)".to_owned(),
                (None, false) => "(unset)".to_owned(),
            };
            let help = var.help.replace('\n', " ");
            println!("| `{}` | {flag} | {default} | {help} |", var.name);
        }
    }
}

/// Docker Compose v2 itself: `docker compose config` parses, interpolates and
/// validates without a daemon. Its rendering must agree with this test's model.
#[test]
fn docker_compose_config_accepts_the_stack_and_agrees_with_this_test() {
    let root = root();
    let script = root.join("deploy/compose-cli.sh");
    let output = Command::new("bash").arg(&script).output().expect("bash runs deploy/compose-cli.sh");
    assert!(
        output.status.success(),
        "deploy/compose-cli.sh could not find or install Docker Compose v2: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let compose_bin = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stack = load_stack();
    let variables = test_variables(&stack.env_example);
    let secrets: Vec<(&String, &String)> = stack
        .env_example
        .iter()
        .filter(|(_, v)| v.is_empty())
        .filter_map(|(k, _)| variables.get_key_value(k))
        .collect();

    let run = |dir: &Path, extra_env: &[(&String, &String)], args: &[&str]| {
        let mut command = Command::new(&compose_bin);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| dir.as_os_str().to_owned()))
            .arg("--project-directory")
            .arg(dir)
            .arg("--file")
            .arg(dir.join("compose.yaml"))
            .arg("--env-file")
            .arg(root.join(".env.example"))
            .args(["--profile", "tools"])
            .args(args);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command.output().expect("docker compose runs")
    };

    // As a newcomer would run it without setting the secret: refused, clearly.
    let refused = run(&root, &[], &["config", "--quiet"]);
    assert!(!refused.status.success(), "docker compose accepted the stack without POSTGRES_PASSWORD");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("POSTGRES_PASSWORD"));

    let checked = run(&root, &secrets, &["config", "--quiet"]);
    assert!(
        checked.status.success(),
        "docker compose config rejects compose.yaml: {}",
        String::from_utf8_lossy(&checked.stderr)
    );

    let rendered = run(&root, &secrets, &["config", "--format", "json"]);
    assert!(
        rendered.status.success(),
        "docker compose config --format json: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    // Compose escapes a literal `$` as `$$` again when it renders.
    let model = unescape_dollars(serde_json::from_slice(&rendered.stdout).expect("docker compose prints JSON"));
    let theirs = services(&model);
    let ours = services(&stack.compose);
    assert_eq!(theirs.keys().collect::<Vec<_>>(), ours.keys().collect::<Vec<_>>(), "service names");
    for (name, service) in &ours {
        let their = &theirs[name];
        assert_eq!(environment(their), environment(service), "{name}: environment");
        assert_eq!(string_list(&their["command"]), string_list(&service["command"]), "{name}: command");
        assert_eq!(string_list(&their["entrypoint"]), string_list(&service["entrypoint"]), "{name}: entrypoint");
        assert_eq!(their["image"], service["image"], "{name}: image");
        assert_eq!(their["restart"], service["restart"], "{name}: restart");
        assert_eq!(healthcheck_words(their), healthcheck_words(service), "{name}: healthcheck");
        assert_eq!(depends_on(their), depends_on(service), "{name}: depends_on");
    }

    // And it fails on a broken file: the topics job renamed, so the services
    // depend on a service that does not exist.
    let broken_dir = tempfile::tempdir().expect("a temporary directory");
    let broken = read("compose.yaml").replace("\n  topics:\n", "\n  topics-job:\n");
    assert_ne!(broken, read("compose.yaml"), "the breakage applies");
    std::fs::write(broken_dir.path().join("compose.yaml"), broken).expect("write the broken compose file");
    std::fs::create_dir_all(broken_dir.path().join("deploy/postgres/init")).expect("init dir");
    let rejected = run(broken_dir.path(), &secrets, &["config", "--quiet"]);
    assert!(!rejected.status.success(), "docker compose accepted a dependency on an undefined service");
}
