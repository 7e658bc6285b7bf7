//! Checks of the Kafka-backed staging deployment: `compose.yaml`, the
//! `Dockerfile`, `.env.example`, `deploy/` and the docs. No container engine is
//! needed:
//!
//! - Docker Compose v2 itself (`docker compose config`, found or fetched by
//!   deploy/compose-cli.sh) parses, interpolates, merges and validates the stack
//!   against the Compose Specification without a daemon, and renders the model as
//!   JSON. Every other check reads that model: what Compose would run.
//! - The code: the services' real clap `Config` types (every environment variable a
//!   service reads is set or has a default, every variable set is one it reads, and
//!   every value parses), the workspace's crates and binaries.
//! - The stack itself: host names, ports, databases, consumer groups, health checks,
//!   start-up order, `${VARIABLES}` against `.env.example`, Kafka's listeners and the
//!   settings it shares with the test brokers (deploy/kafka/server.properties).
//! - `on_kafka_compose_kafka_settings_run_the_saga` runs the kafka service's
//!   settings for real: the image's own configuration step on the jars of
//!   scripts/kafka.sh with compose's secrets made by deploy/kafka/secrets.sh, the
//!   kafka-setup job's script (SCRAM users, ACLs), then one order end to end on
//!   that broker, every service as its own principal.
//!
//! Each check returns a list of problems; `checks_catch_broken_stacks` and
//! `compose_refuses_broken_files` break the stack in known ways and assert that the
//! checks notice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use rdkafka::Message as _;
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
const ONE_SHOT: &[&str] = &["kafka-setup", "topics", "cli"];

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

/// Where the apache/kafka image looks for a server.properties of the user's: it
/// copies the file and appends a property for each KAFKA_* variable.
const KAFKA_MOUNTED_CONFIG: &str = "/mnt/shared/config/server.properties";

/// The settings every Kafka of this project runs, mounted there.
const KAFKA_SHARED_CONFIG: &str = "deploy/kafka/server.properties";

/// The security settings every secure Kafka runs (the tests' secure broker
/// appends the file); staging's node sets each as a KAFKA_* variable, since the
/// image reads only one mounted server.properties.
const KAFKA_SECURE_CONFIG: &str = "deploy/kafka/secure.properties";

/// The grants of `shopctl acls`, as the kafka-setup job applies them.
const KAFKA_ACLS: &str = "deploy/kafka/acls.txt";

/// Properties of the shared file that the staging node may set again: they follow
/// a compose variable (TOPIC_PARTITIONS).
const KAFKA_PER_DEPLOYMENT: &[&str] = &["num.partitions"];

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

/// One `${VAR}` of compose.yaml, as `docker compose config --variables` reports it.
#[derive(Debug, Clone)]
struct ComposeVar {
    /// The value used when the variable is unset (`${VAR:-x}`); None without one.
    default: Option<String>,
    /// `${VAR:?message}`.
    required: bool,
}

/// The deployment files, read and rendered.
#[derive(Debug, Clone)]
struct Stack {
    /// `docker compose config --format json` with the values of .env.example (plus
    /// placeholders for the secrets it leaves empty): what Compose would run.
    compose: Value,
    /// Every variable compose.yaml uses.
    variables: BTreeMap<String, ComposeVar>,
    env_example: Vec<(String, String)>,
    /// Lines of .env.example, to check that each variable is documented.
    env_example_text: String,
    dockerfile: String,
    /// CREATE DATABASE names in deploy/postgres/init/*.sql.
    init_databases: Vec<String>,
    configuration_md: String,
    staging_md: String,
    /// deploy/kafka/server.properties.
    kafka_shared: BTreeMap<String, String>,
    /// deploy/kafka/secure.properties.
    kafka_secure: BTreeMap<String, String>,
    /// deploy/kafka/acls.txt.
    kafka_acls: String,
    /// The Apache Kafka release whose jars scripts/kafka.sh runs in the tests.
    kafka_version: String,
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

/// `key=value` lines of a Java properties file (the simple form this project
/// writes); a key given twice keeps its last value, as Kafka reads it.
fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Placeholder values for the secrets .env.example leaves empty on purpose.
fn secrets(env_example: &[(String, String)]) -> BTreeMap<String, String> {
    env_example
        .iter()
        .filter(|(_, value)| value.is_empty())
        .map(|(name, _)| (name.clone(), format!("test-only-{}", name.to_lowercase())))
        .collect()
}

fn load_stack() -> Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(read_stack).clone()
}

fn read_stack() -> Stack {
    let (file, env_file) = (root().join("compose.yaml"), root().join(".env.example"));
    let env_example_text = read(".env.example");
    let env_example = parse_env_file(&env_example_text);
    let (compose, _) = render(&file, &env_file, &secrets(&env_example))
        .unwrap_or_else(|e| panic!("docker compose config rejects compose.yaml with .env.example: {e}"));
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
    let kafka_version = read("scripts/kafka.sh")
        .lines()
        .find_map(|line| line.strip_prefix("version="))
        .expect("scripts/kafka.sh sets version=")
        .to_owned();
    Stack {
        compose,
        variables: variables(&file, &env_file),
        env_example,
        env_example_text,
        dockerfile: read("Dockerfile"),
        init_databases,
        configuration_md: read("docs/configuration.md"),
        staging_md: read("docs/staging.md"),
        kafka_shared: parse_properties(&read(KAFKA_SHARED_CONFIG)),
        kafka_secure: parse_properties(&read(KAFKA_SECURE_CONFIG)),
        kafka_acls: read(KAFKA_ACLS),
        kafka_version,
    }
}

// ---------------------------------------------------------------------------
// Docker Compose itself
// ---------------------------------------------------------------------------

fn compose_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = root().join("deploy/compose-cli.sh");
        let output = Command::new("bash").arg(&script).output().expect("bash runs deploy/compose-cli.sh");
        assert!(
            output.status.success(),
            "deploy/compose-cli.sh could not find or install Docker Compose v2: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// `docker compose ARGS` on `file`, whose relative paths resolve against the
/// workspace root as compose.yaml's do, with the variables of `env_file` and `env`
/// only: no `.env`, nothing from this process (scripts/test.sh sets RUST_LOG).
fn compose(file: &Path, env_file: &Path, env: &BTreeMap<String, String>, args: &[&str]) -> Output {
    let root = root();
    Command::new(compose_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| root.as_os_str().to_owned()))
        .envs(env)
        .arg("--project-directory")
        .arg(&root)
        .arg("--file")
        .arg(file)
        .arg("--env-file")
        .arg(env_file)
        .args(["--profile", "tools"])
        .args(args)
        .output()
        .expect("docker compose runs")
}

/// The model `docker compose config` renders and its warnings, or why it refused.
fn render(file: &Path, env_file: &Path, env: &BTreeMap<String, String>) -> Result<(Value, String), String> {
    let output = compose(file, env_file, env, &["config", "--format", "json"]);
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    let model = serde_json::from_slice(&output.stdout).map_err(|e| format!("docker compose printed no JSON: {e}"))?;
    Ok((model, stderr))
}

/// `docker compose config --variables`: every `${VAR}` with its default.
fn variables(file: &Path, env_file: &Path) -> BTreeMap<String, ComposeVar> {
    let output = compose(file, env_file, &BTreeMap::new(), &["config", "--variables", "--format", "json"]);
    assert!(output.status.success(), "docker compose config --variables: {}", String::from_utf8_lossy(&output.stderr));
    let listed: BTreeMap<String, Value> = serde_json::from_slice(&output.stdout).expect("variables as JSON");
    listed
        .into_iter()
        .map(|(name, var)| {
            let required = var["Required"] == json!(true);
            let default = var["DefaultValue"].as_str().filter(|d| !d.is_empty()).map(str::to_owned);
            (name, ComposeVar { default, required })
        })
        .collect()
}

/// Where two renderings first differ, as a path into the model.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|key| {
                let (left, right) = (x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null));
                first_difference(left, right, &format!("{path}.{key}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{} ({a} against {b})", path.trim_start_matches('.'))),
    }
}

/// What only Compose can tell about the files: it accepts them, without warnings,
/// refuses them while a secret is unset, and every value .env.example sets is the
/// default compose.yaml uses anyway.
fn check_with_compose(file: &Path, env_file: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let env_text = std::fs::read_to_string(env_file).expect("the env file is readable");
    let env_example = parse_env_file(&env_text);
    let secrets = secrets(&env_example);
    // Exactly as a newcomer would run it: `cp .env.example .env` without editing.
    match render(file, env_file, &BTreeMap::new()) {
        Ok(_) if !secrets.is_empty() => problems.push(format!(
            "docker compose config accepts the stack with {:?} unset; they must be required",
            secrets.keys()
        )),
        Err(error) if !secrets.keys().any(|name| error.contains(name.as_str())) => problems
            .push(format!("with .env.example as shipped, docker compose config fails for another reason: {error}")),
        _ => {}
    }
    let with_example = match render(file, env_file, &secrets) {
        Ok((model, warnings)) => {
            if !warnings.is_empty() {
                problems.push(format!("docker compose config warns: {warnings}"));
            }
            model
        }
        Err(error) => {
            problems.push(format!("docker compose config rejects the stack: {error}"));
            return problems;
        }
    };
    match render(file, Path::new("/dev/null"), &secrets) {
        Ok((with_defaults, _)) => {
            if let Some(difference) = first_difference(&with_example, &with_defaults, "") {
                problems.push(format!(
                    "with .env.example, compose renders {difference} otherwise than with its defaults; \
                     .env.example must set every variable to compose.yaml's default"
                ));
            }
        }
        Err(error) => problems.push(format!("docker compose config rejects the stack with no variables set: {error}")),
    }
    problems
}

// ---------------------------------------------------------------------------
// Helpers over the rendered model
// ---------------------------------------------------------------------------

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_object()
        .map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// A service's environment (Compose renders it as a map).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(map) = service["environment"].as_object() else { return BTreeMap::new() };
    map.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect()
}

fn string_list(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

/// The program a service runs: the entrypoint's first word, else the command's.
fn program(service: &Value) -> Option<String> {
    let entrypoint = string_list(&service["entrypoint"]);
    let command = string_list(&service["command"]);
    entrypoint.first().or(command.first()).cloned()
}

/// `depends_on` as name -> condition.
fn depends_on(service: &Value) -> BTreeMap<String, String> {
    let Some(map) = service["depends_on"].as_object() else { return BTreeMap::new() };
    map.iter()
        .map(|(name, spec)| (name.clone(), spec["condition"].as_str().unwrap_or("service_started").to_owned()))
        .collect()
}

/// Published ports as (host address, container port).
fn published(service: &Value) -> Vec<(String, u16)> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            let host_ip = port["host_ip"].as_str().unwrap_or("0.0.0.0");
            let host_port =
                port["published"].as_str().map(str::to_owned).unwrap_or_else(|| port["published"].to_string());
            let target = port["target"].as_u64().and_then(|t| u16::try_from(t).ok()).unwrap_or(0);
            (format!("{host_ip}:{host_port}"), target)
        })
        .collect()
}

/// The volume of `service` mounted at `target`.
fn mount<'a>(service: &'a Value, target: &str) -> Option<&'a Value> {
    service["volumes"].as_array()?.iter().find(|v| v["target"] == target)
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
        if (trimmed.starts_with('#') || trimmed.is_empty()) && current.is_empty() {
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
// Kafka: the image's configuration, the listeners
// ---------------------------------------------------------------------------

/// The property the apache/kafka image makes of a variable (its configuration step,
/// `kafka.docker.KafkaDockerWrapper`): `KAFKA_` dropped, lower case, `_` -> `.`,
/// `___` -> `-`, `__` -> `_`. None for the variables it leaves out.
fn kafka_property(variable: &str) -> Option<String> {
    const LEFT_OUT: &[&str] = &[
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
        "KAFKA_JMX_HOSTNAME",
    ];
    let rest = variable.strip_prefix("KAFKA_").filter(|_| !LEFT_OUT.contains(&variable))?;
    Some(rest.to_lowercase().replace('_', ".").replace("...", "-").replace("..", "_"))
}

/// The staging node's settings: the shared file, then its KAFKA_* variables.
fn kafka_settings(stack: &Stack) -> BTreeMap<String, String> {
    let mut settings = stack.kafka_shared.clone();
    if let Some(kafka) = stack.compose["services"].get("kafka") {
        for (variable, value) in environment(kafka) {
            if let Some(property) = kafka_property(&variable) {
                settings.insert(property, value);
            }
        }
    }
    settings
}

/// `NAME://HOST:PORT,...` as (name, host, port).
fn listeners(value: &str) -> Vec<(String, String, u16)> {
    value
        .split(',')
        .filter_map(|listener| {
            let (name, address) = listener.trim().split_once("://")?;
            let (host, port) = address.rsplit_once(':')?;
            Some((name.to_owned(), host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The address other containers reach Kafka at: its advertised listener on the
/// service's own host name.
fn kafka_internal_address(stack: &Stack) -> Option<String> {
    let settings = kafka_settings(stack);
    listeners(settings.get("advertised.listeners")?)
        .into_iter()
        .find(|(_, host, _)| host == "kafka")
        .map(|(_, host, port)| format!("{host}:{port}"))
}

// ---------------------------------------------------------------------------
// The checks. Each returns its problems; none means the stack passed.
// ---------------------------------------------------------------------------

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

/// The kafka service: the tests' release, their shared settings mounted where the
/// image reads them, and only this node's own settings in its environment; one
/// node's replication; listeners that containers and the host can reach.
fn check_kafka(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let all = services(&stack.compose);
    let Some(kafka) = all.get("kafka") else { return vec!["no kafka service".to_owned()] };
    let env = environment(kafka);

    let image = format!("apache/kafka:{}", stack.kafka_version);
    if kafka["image"] != image.as_str() {
        problems.push(format!(
            "kafka image is {}, but the tests run Kafka {} (scripts/kafka.sh): expected {image}",
            kafka["image"], stack.kafka_version
        ));
    }
    let shared = root().join(KAFKA_SHARED_CONFIG);
    match mount(kafka, KAFKA_MOUNTED_CONFIG) {
        Some(volume) => {
            if volume["type"] != "bind" || volume["source"] != shared.display().to_string().as_str() {
                problems.push(format!(
                    "kafka: {KAFKA_MOUNTED_CONFIG} is {} {}, not ./{KAFKA_SHARED_CONFIG}",
                    volume["type"], volume["source"]
                ));
            }
            if volume["read_only"] != json!(true) {
                problems.push(format!("kafka: ./{KAFKA_SHARED_CONFIG} must be mounted read-only (:ro)"));
            }
        }
        None => problems.push(format!(
            "kafka: ./{KAFKA_SHARED_CONFIG} is not mounted at {KAFKA_MOUNTED_CONFIG}, so staging runs other settings than the tests"
        )),
    }
    if !shared.is_file() {
        // Docker would create a directory in its place and Kafka would start without it.
        problems.push(format!("{KAFKA_SHARED_CONFIG} is missing"));
    }
    for (variable, value) in &env {
        let Some(property) = kafka_property(variable) else { continue };
        if let Some(theirs) = stack.kafka_shared.get(&property) {
            if !KAFKA_PER_DEPLOYMENT.contains(&property.as_str()) {
                problems.push(format!(
                    "kafka: {variable}={value} sets {property}, which {KAFKA_SHARED_CONFIG} sets ({theirs}) for every \
                     Kafka; keep it in one place"
                ));
            }
        }
    }

    let settings = kafka_settings(stack);
    let setting = |key: &str| settings.get(key).cloned().unwrap_or_default();
    if setting("auto.create.topics.enable") != "false" {
        problems
            .push("kafka: auto.create.topics.enable must be false (topics are created by the topics job)".to_owned());
    }
    for (key, value) in &settings {
        let replicas = key.ends_with("replication.factor") || key.ends_with("min.isr") || key == "min.insync.replicas";
        if replicas && !value.parse::<i64>().is_ok_and(|n| n <= 1) {
            problems.push(format!("kafka: {key}={value}, but a single node holds one replica"));
        }
    }
    for (name, service) in app_services(stack) {
        if let Some(replication) = environment(&service).get("TOPIC_REPLICATION").filter(|r| r.as_str() != "1") {
            problems.push(format!("service {name}: TOPIC_REPLICATION={replication}, but Kafka is a single node"));
        }
    }

    // Listeners: bound in the container, advertised to containers (kafka:PORT) and
    // to the host (through a published port). Kafka itself refuses listeners
    // without a protocol, voters on no controller listener and the like, and
    // on_kafka_compose_kafka_settings_run_the_saga runs these settings.
    let bound = listeners(&setting("listeners"));
    let advertised = listeners(&setting("advertised.listeners"));
    let port_of_listener = |name: &str| bound.iter().find(|(n, _, _)| n == name).map(|(_, _, port)| *port);
    let inter_broker = setting("inter.broker.listener.name");
    for (name, host, port) in &advertised {
        let Some(listening) = port_of_listener(name) else {
            problems.push(format!("kafka: advertises {name}, which is not in listeners"));
            continue;
        };
        if host == "kafka" {
            if *port != listening {
                problems.push(format!("kafka: advertises {name} at kafka:{port}, but listens for it on {listening}"));
            }
        } else if !published(kafka)
            .iter()
            .any(|(address, target)| port_of(address) == Some(*port) && *target == listening)
        {
            problems.push(format!(
                "kafka: advertises {name} at {host}:{port} to the host, but no published port {port} leads to its port {listening}"
            ));
        }
    }
    if !advertised.iter().any(|(name, host, _)| *name == inter_broker && host == "kafka") {
        problems.push(format!("kafka: the inter-broker listener {inter_broker} is not advertised at kafka:PORT"));
    }
    // Its data on a named volume, so that it survives the container.
    for dir in setting("log.dirs").split(',') {
        let on_volume = mount(kafka, dir).is_some_and(|v| v["type"] == "volume");
        if !on_volume {
            problems.push(format!("kafka: log.dirs {dir:?} is not a named volume's mount point"));
        }
    }
    // The health check asks the listener the services use.
    let check = healthcheck_words(kafka).join(" ");
    let expected = port_of_listener(&inter_broker).map(|p| format!("--bootstrap-server localhost:{p} "));
    if !expected.as_ref().is_some_and(|e| check.contains(e.as_str())) {
        problems.push(format!("kafka: health check {check:?} does not ask {expected:?}"));
    }
    problems
}

/// Kafka is secure in staging: the node runs deploy/kafka/secure.properties,
/// every program authenticates over SASL_SSL as its own principal with its
/// password from a compose secret, and the kafka-setup job grants what `shopctl
/// acls` prints.
fn check_kafka_security(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let settings = kafka_settings(stack);
    for (key, value) in &stack.kafka_secure {
        match settings.get(key) {
            Some(theirs) if theirs == value => {}
            theirs => problems.push(format!(
                "kafka: {key} is {theirs:?} in compose, but {KAFKA_SECURE_CONFIG} (what the tests' secure broker runs) \
                 says {value:?}"
            )),
        }
    }
    let protocols = settings.get("listener.security.protocol.map").cloned().unwrap_or_default();
    for (name, _, _) in listeners(settings.get("listeners").map_or("", String::as_str)) {
        let protocol = protocols.split(',').find_map(|entry| entry.strip_prefix(&format!("{name}:")));
        if !matches!(protocol, Some("SASL_SSL" | "SSL")) {
            problems.push(format!("kafka: listener {name} is {protocol:?}; staging has no plaintext listener"));
        }
    }
    let declared: BTreeSet<String> =
        stack.compose["secrets"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    for (name, service) in app_services(stack) {
        let env = environment(&service);
        if program(&service).as_deref() == Some("gateway-sim") {
            continue;
        }
        let expected = if name.ends_with("-svc") { name.as_str() } else { events::access::OPERATOR };
        if env.get("KAFKA_SECURITY_PROTOCOL").map(String::as_str) != Some("sasl_ssl") {
            problems.push(format!("service {name}: KAFKA_SECURITY_PROTOCOL is not sasl_ssl"));
        }
        if env.get("KAFKA_SASL_USERNAME").map(String::as_str) != Some(expected) {
            problems.push(format!(
                "service {name}: KAFKA_SASL_USERNAME is {:?}; expected its own principal {expected}",
                env.get("KAFKA_SASL_USERNAME")
            ));
        }
        if env.contains_key("KAFKA_SASL_PASSWORD") {
            problems.push(format!("service {name}: a password in the environment; use KAFKA_SASL_PASSWORD_FILE"));
        }
        let mounted: Vec<String> = service["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["source"].as_str().or(s.as_str()).map(str::to_owned))
            .collect();
        for var in ["KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CA_LOCATION"] {
            let path = env.get(var).cloned().unwrap_or_default();
            let secret = path.strip_prefix("/run/secrets/").unwrap_or_default();
            if !declared.contains(secret) || !mounted.iter().any(|m| m == secret) {
                problems.push(format!("service {name}: {var}={path:?} is no compose secret mounted in it"));
            }
        }
        if env.get("KAFKA_SASL_PASSWORD_FILE").is_some_and(|p| !p.contains(&format!("kafka-{expected}-password"))) {
            problems.push(format!("service {name}: KAFKA_SASL_PASSWORD_FILE is not {expected}'s password"));
        }
    }
    let printed: Vec<String> = events::access::acl_commands().iter().map(|c| c.join(" ")).collect();
    let committed: Vec<String> = stack.kafka_acls.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect();
    if printed != committed {
        problems.push(format!(
            "{KAFKA_ACLS} is not what `shopctl acls` prints; regenerate it (shopctl acls > {KAFKA_ACLS})"
        ));
    }
    problems
}

fn check_wiring(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let all = services(&stack.compose);
    let Some(postgres) = all.get("postgres") else { return vec!["no postgres service".to_owned()] };
    let postgres_env = environment(postgres);
    let Some(internal) = kafka_internal_address(stack) else {
        return vec!["kafka: no listener advertised to other containers (kafka:PORT)".to_owned()];
    };
    let database_user = postgres_env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".to_owned());
    let database_password = postgres_env.get("POSTGRES_PASSWORD").cloned().unwrap_or_default();
    if !postgres["image"].as_str().is_some_and(|i| i.starts_with("postgres:16")) {
        problems.push(format!("postgres image is {}, expected postgres:16", postgres["image"]));
    }
    let init = root().join("deploy/postgres/init").display().to_string();
    let init_mounted = mount(postgres, "/docker-entrypoint-initdb.d")
        .is_some_and(|v| v["source"] == init.as_str() && v["read_only"] == json!(true));
    if !init_mounted {
        problems
            .push("postgres: deploy/postgres/init is not mounted read-only at /docker-entrypoint-initdb.d".to_owned());
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
        if !env.get("HTTP_ADDR").is_some_and(|a| a.starts_with("0.0.0.0:")) {
            problems.push(format!("service {name}: HTTP_ADDR must listen on 0.0.0.0 (got {:?})", env.get("HTTP_ADDR")));
        }
        let check = healthcheck_words(&service).join(" ");
        let expected_url = http_port.map(|p| format!("http://127.0.0.1:{p}/readyz"));
        if !expected_url.as_ref().is_some_and(|u| check.contains(u.as_str())) {
            problems.push(format!("service {name}: health check {check:?} does not hit {expected_url:?}"));
        }
        for (address, target) in published(&service) {
            if Some(target) != http_port {
                problems.push(format!(
                    "service {name}: published port {address} targets {target}, not HTTP port {http_port:?}"
                ));
            }
        }
    }
    for expected in &stack.init_databases {
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
    let runtime = dockerfile_stages(&stack.dockerfile).pop().map(|(_, body)| body.join("\n")).unwrap_or_default();
    let built = app_services(stack);
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
        if test.iter().any(|w| w == "curl") && built.contains_key(&name) && !runtime.contains("curl") {
            problems.push(format!("service {name}: its health check uses curl, which the runtime image lacks"));
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
            // Compose itself refuses dependencies on undefined services.
            let Some(target) = all.get(dependency) else { continue };
            match condition.as_str() {
                "service_healthy" if target.get("healthcheck").is_none() => problems
                    .push(format!("service {name} waits for {dependency} to be healthy, which has no health check")),
                "service_completed_successfully" if target["restart"].as_str() != Some("no") => {
                    problems.push(format!("service {name} waits for {dependency} to complete, which is not a one-shot"))
                }
                _ => {}
            }
            if service.get("profiles").is_none() && target.get("profiles").is_some() {
                problems.push(format!("service {name} depends on {dependency}, which only runs under a profile"));
            }
        }
        // Whatever a service talks to (host names in its environment) it waits for.
        for value in environment(service).values() {
            for address in value.split(',') {
                let Some((host, _)) = host_port(address) else { continue };
                if host != *name
                    && all.contains_key(&host)
                    && deps.get(&host).map(String::as_str) != Some("service_healthy")
                {
                    problems.push(format!("service {name} talks to {host} but does not wait for it to be healthy"));
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
    for (name, var) in &stack.variables {
        match documented.get(name.as_str()) {
            None => problems.push(format!("compose.yaml uses ${{{name}}}, which .env.example does not list")),
            Some(value) => {
                if let Some(default) = var.default.as_deref().filter(|d| d != value) {
                    problems
                        .push(format!(".env.example sets {name}={value}, but compose.yaml defaults it to {default:?}"));
                }
                if value.is_empty() && !var.required {
                    problems.push(format!(".env.example leaves {name} empty but compose.yaml does not require it"));
                }
                if !value.is_empty() && var.required {
                    problems.push(format!("compose.yaml requires {name}, a secret, but .env.example gives it a value"));
                }
            }
        }
    }
    for (name, _) in &stack.env_example {
        if !stack.variables.contains_key(name) {
            problems.push(format!(".env.example lists {name}, which compose.yaml does not use"));
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
    match stages.first() {
        Some((from, body)) => {
            let body = body.join("\n");
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
    let context = root().display().to_string();
    for (name, service) in services(&stack.compose) {
        if let Some(build) = service.get("build") {
            if service["image"].as_str() != image.as_deref() {
                problems.push(format!("service {name} builds an image other than {image:?}"));
            }
            if build["context"] != context.as_str() || build["dockerfile"] != "Dockerfile" {
                problems.push(format!(
                    "service {name} builds {} {}, not ./Dockerfile",
                    build["context"], build["dockerfile"]
                ));
            }
        }
    }
    problems
}

fn check_ports(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in services(&stack.compose) {
        for (address, _) in published(&service) {
            if let Some(other) = taken.insert(address.clone(), name.clone()) {
                problems.push(format!("services {other} and {name} both publish {address}"));
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
    for (doc, text) in [("docs/staging.md", &stack.staging_md), ("docs/configuration.md", &stack.configuration_md)] {
        if !text.contains(KAFKA_SHARED_CONFIG) {
            problems.push(format!("{doc} does not say that Kafka's settings come from {KAFKA_SHARED_CONFIG}"));
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

fn all_problems(stack: &Stack, code: &Code) -> Vec<String> {
    let mut problems = check_service_crates(stack, code);
    problems.extend(check_environment(stack, code));
    problems.extend(check_kafka(stack));
    problems.extend(check_kafka_security(stack));
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
fn docker_compose_accepts_the_stack_and_needs_only_the_secrets_set() {
    assert_no_problems(
        "docker compose config",
        check_with_compose(&root().join("compose.yaml"), &root().join(".env.example")),
    );
}

#[test]
fn every_service_crate_is_deployed_with_the_environment_its_config_reads() {
    let (stack, code) = (load_stack(), load_code());
    let mut problems = check_service_crates(&stack, &code);
    problems.extend(check_environment(&stack, &code));
    assert_no_problems("services and environment", problems);
}

#[test]
fn kafka_runs_the_tests_release_and_their_shared_settings() {
    assert_no_problems("kafka", check_kafka(&load_stack()));
}

#[test]
fn kafka_is_secure_with_a_principal_per_service_and_the_acls_of_shopctl() {
    assert_no_problems("kafka security", check_kafka_security(&load_stack()));
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
    let (stack, code) = (load_stack(), load_code());
    assert_no_problems("the stack as committed", all_problems(&stack, &code));

    type Breakage = (&'static str, &'static str, fn(&mut Stack, &mut Code));
    let breakages: &[Breakage] = &[
        ("missing service", "no compose service", |s, _| {
            s.compose["services"].as_object_mut().expect("services").remove("inventory-svc");
        }),
        ("misspelt variable", "KAFKA_BROKER is set", |s, _| {
            let env = s.compose["services"]["inventory-svc"]["environment"].as_object_mut().expect("map");
            let value = env.remove("KAFKA_BROKERS").expect("KAFKA_BROKERS");
            env.insert("KAFKA_BROKER".to_owned(), value);
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
        ("port clash", "both publish", |s, _| {
            let ports = s.compose["services"]["user-svc"]["ports"].clone();
            s.compose["services"]["product-svc"]["ports"] = ports;
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
        ("undocumented setting", "does not describe BREAKER_WINDOW", |s, _| {
            s.configuration_md = s.configuration_md.replace("`BREAKER_WINDOW`", "BREAKER_WINDOW");
        }),
        ("undocumented fetch wait", "KAFKA_FETCH_WAIT_MAX should show its default", |s, _| {
            s.configuration_md = s.configuration_md.replace("`500ms`", "500 ms");
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
        // Kafka.
        ("another Kafka release", "but the tests run Kafka", |s, _| {
            s.compose["services"]["kafka"]["image"] = json!("apache/kafka:3.9.1");
        }),
        ("shared settings not mounted", "is not mounted at /mnt/shared/config", |s, _| {
            s.compose["services"]["kafka"]["volumes"]
                .as_array_mut()
                .expect("volumes")
                .retain(|v| v["type"] == "volume");
        }),
        ("a shared setting again in compose", "keep it in one place", |s, _| {
            s.compose["services"]["kafka"]["environment"]["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] = json!("0");
        }),
        ("auto-created topics", "auto.create.topics.enable must be false", |s, _| {
            s.kafka_shared.insert("auto.create.topics.enable".to_owned(), "true".to_owned());
        }),
        ("three replicas on one node", "offsets.topic.replication.factor=3, but a single node", |s, _| {
            s.compose["services"]["kafka"]["environment"]["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] = json!("3");
        }),
        ("advertised on the wrong port", "but listens for it on 9092", |s, _| {
            s.compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] =
                json!("INTERNAL://kafka:9095,EXTERNAL://localhost:9094");
        }),
        ("external listener not published", "no published port 9094", |s, _| {
            s.compose["services"]["kafka"]["ports"][0]["target"] = json!(9092);
        }),
        ("data off the volume", "is not a named volume's mount point", |s, _| {
            s.compose["services"]["kafka"]["environment"]["KAFKA_LOG_DIRS"] = json!("/tmp/kraft-combined-logs");
        }),
        ("a plaintext listener", "staging has no plaintext listener", |s, _| {
            s.compose["services"]["kafka"]["environment"]["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] =
                json!("INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL,BROKER:SSL,CONTROLLER:SSL");
        }),
        ("no authorizer", "authorizer.class.name", |s, _| {
            s.compose["services"]["kafka"]["environment"]
                .as_object_mut()
                .expect("map")
                .remove("KAFKA_AUTHORIZER_CLASS_NAME");
        }),
        ("a shared principal", "expected its own principal order-svc", |s, _| {
            s.compose["services"]["order-svc"]["environment"]["KAFKA_SASL_USERNAME"] = json!("payment-svc");
        }),
        ("a password in the environment", "use KAFKA_SASL_PASSWORD_FILE", |s, _| {
            s.compose["services"]["user-svc"]["environment"]["KAFKA_SASL_PASSWORD"] = json!("hunter2");
        }),
        ("a password secret not mounted", "is no compose secret mounted in it", |s, _| {
            s.compose["services"]["inventory-svc"].as_object_mut().expect("map").remove("secrets");
        }),
        ("stale ACLs", "is not what `shopctl acls` prints", |s, _| {
            s.kafka_acls = s.kafka_acls.replace("--operation Write", "--operation All");
        }),
        ("health check on the host's listener", "kafka: health check", |s, _| {
            let test = &mut s.compose["services"]["kafka"]["healthcheck"]["test"][1];
            *test = json!(test.as_str().expect("a shell command").replace("localhost:9095", "localhost:9094"));
        }),
    ];
    for (what, expected, breakage) in breakages {
        let (mut broken, mut broken_code) = (stack.clone(), code.clone());
        breakage(&mut broken, &mut broken_code);
        let problems = all_problems(&broken, &broken_code);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breakage {what:?} was not caught (wanted a problem containing {expected:?}); problems: {problems:#?}"
        );
    }
}

/// What only Compose sees, broken in the files themselves.
#[test]
fn compose_refuses_broken_files() {
    let compose_yaml = read("compose.yaml");
    let env_example = read(".env.example");
    let breakages: &[(&str, &str, &str, &str, &str)] = &[
        // (what, wanted problem, file, text, replacement)
        (
            "unknown key",
            "additional properties 'healthchek' not allowed",
            "compose.yaml",
            "\n    healthcheck:\n",
            "\n    healthchek:\n",
        ),
        (
            "obsolete version key",
            "obsolete",
            "compose.yaml",
            "\nname: shop-saga\n",
            "\nversion: \"3.9\"\nname: shop-saga\n",
        ),
        (
            "dependency on an undefined service",
            "undefined service",
            "compose.yaml",
            "\n  topics:\n",
            "\n  topics-job:\n",
        ),
        ("secret not required", "must be required", "compose.yaml", "${POSTGRES_PASSWORD:?", "${POSTGRES_PASSWORD:-"),
        (
            "two defaults of one variable",
            "otherwise than with its defaults",
            "compose.yaml",
            "\"${TOPIC_PARTITIONS:-6}\"]",
            "\"${TOPIC_PARTITIONS:-5}\"]",
        ),
        (
            "example value other than the default",
            "otherwise than with its defaults",
            ".env.example",
            "\nKAFKA_HOST_PORT=9094\n",
            "\nKAFKA_HOST_PORT=19094\n",
        ),
    ];
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (what, expected, file, text, replacement) in breakages {
        let (mut broken_compose, mut broken_env) = (compose_yaml.clone(), env_example.clone());
        let target = if *file == "compose.yaml" { &mut broken_compose } else { &mut broken_env };
        assert!(target.contains(text), "breakage {what:?}: {file} no longer contains {text:?}");
        *target = target.replace(text, replacement);
        let (compose_path, env_path) = (dir.path().join("compose.yaml"), dir.path().join("env"));
        std::fs::write(&compose_path, broken_compose).expect("write compose.yaml");
        std::fs::write(&env_path, broken_env).expect("write the env file");
        let problems = check_with_compose(&compose_path, &env_path);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "breakage {what:?} was not caught (wanted a problem containing {expected:?}); problems: {problems:#?}"
        );
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

// ---------------------------------------------------------------------------
// compose's Kafka, run: the image's configuration step on the tests' jars
// ---------------------------------------------------------------------------

/// The kafka service's network, moved onto this machine: each port the container
/// listens on becomes a free loopback port.
struct KafkaNetwork {
    /// Container port -> local port.
    ports: BTreeMap<u16, u16>,
    /// Published host port -> container port.
    published: BTreeMap<u16, u16>,
}

impl KafkaNetwork {
    fn new(kafka: &Value, bound: &[(String, String, u16)]) -> KafkaNetwork {
        let ports = bound.iter().map(|(_, _, port)| (*port, saga_tests::broker::free_port())).collect();
        let published =
            published(kafka).into_iter().filter_map(|(address, target)| Some((port_of(&address)?, target))).collect();
        KafkaNetwork { ports, published }
    }

    /// `kafka:PORT` as another container reaches it (or `localhost:PORT` as the
    /// kafka container itself does), moved here.
    fn via_containers(&self, address: &str) -> String {
        let (host, port) = host_port(address).unwrap_or_else(|| panic!("{address:?} is not HOST:PORT"));
        let local = self.ports.get(&port).filter(|_| matches!(host.as_str(), "kafka" | "localhost" | "127.0.0.1"));
        let local = local.unwrap_or_else(|| {
            panic!("{address} reaches no listener of the kafka service (it listens on {:?})", self.ports.keys())
        });
        format!("127.0.0.1:{local}")
    }

    /// `HOST:PORT` as a client on the host reaches it: through a published port.
    fn via_the_host(&self, host: &str, port: u16) -> String {
        let local = self.published.get(&port).and_then(|target| self.ports.get(target));
        let local = local.unwrap_or_else(|| {
            panic!(
                "{host}:{port} reaches no listener of the kafka service from the host (published: {:?})",
                self.published
            )
        });
        format!("127.0.0.1:{local}")
    }

    /// An advertised address, for the clients it is meant for: other containers on
    /// the service's host name, the host on any other.
    fn advertised(&self, host: &str, port: u16) -> String {
        if host == "kafka" {
            self.via_containers(&format!("{host}:{port}"))
        } else {
            self.via_the_host(host, port)
        }
    }
}

/// The `KafkaConfig values:` Kafka logs at start: every setting it knows, as it
/// took it.
fn kafka_config_dump(server_log: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut inside = false;
    for line in server_log.lines() {
        if line.contains("INFO KafkaConfig values:") {
            inside = true;
        } else if let Some(entry) = line.strip_prefix('\t').filter(|_| inside) {
            if let Some((key, value)) = entry.split_once(" = ") {
                values.insert(key.to_owned(), value.to_owned());
            }
        } else {
            inside = false;
        }
    }
    values
}

/// A setting's value with Kafka's list brackets and spaces taken out.
fn normalized(value: &str) -> String {
    let value = value.trim().strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value.trim());
    value.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// compose's Kafka settings, run for real: the kafka service's environment with
/// only its listener addresses moved to free loopback ports and its log dir to a
/// temporary one, the mounted deploy/kafka/server.properties, the image's own
/// configuration step (`kafka.docker.KafkaDockerWrapper setup`, on the jars of
/// scripts/kafka.sh), the broker it configured; then the topics job's command, the
/// health check, and one order through the six services on PostgreSQL. A wrong
/// listener, protocol map or replication factor in compose.yaml fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_kafka_compose_kafka_settings_run_the_saga() {
    let deployment = load_stack();
    let all = services(&deployment.compose);
    let kafka = &all["kafka"];
    let libs = Command::new(root().join("scripts/kafka.sh")).output().expect("scripts/kafka.sh runs");
    assert!(libs.status.success(), "scripts/kafka.sh: {}", String::from_utf8_lossy(&libs.stderr));
    let classpath = format!("{}/*", String::from_utf8_lossy(&libs.stdout).trim());

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (defaults, mounted, config) =
        (dir.path().join("default"), dir.path().join("mounted"), dir.path().join("final"));
    for sub in [&defaults, &mounted, &config] {
        std::fs::create_dir_all(sub).expect("a config directory");
    }
    // What compose mounts into /mnt/shared/config.
    let mut mounts = 0;
    for volume in kafka["volumes"].as_array().into_iter().flatten() {
        let target = volume["target"].as_str().unwrap_or_default();
        if let Some(name) = target.strip_prefix("/mnt/shared/config/") {
            let source = volume["source"].as_str().expect("a bind mount's source");
            std::fs::copy(source, mounted.join(name)).unwrap_or_else(|e| panic!("cannot copy {source}: {e}"));
            mounts += 1;
        }
    }
    assert!(mounts > 0, "compose mounts nothing into the kafka service's /mnt/shared/config");

    // Compose's secrets, made here as staging makes them (deploy/kafka/secrets.sh),
    // and each /run/secrets/<name> a program is given moved to its file here.
    let secrets = saga_tests::broker::make_secrets(&dir.path().join("secrets"));
    let mut secret_files = BTreeMap::new();
    for (name, secret) in deployment.compose["secrets"].as_object().into_iter().flatten() {
        let file = Path::new(secret["file"].as_str().expect("a file secret"));
        let local = secrets.join(file.file_name().expect("a file name"));
        assert!(local.is_file(), "secret {name}: deploy/kafka/secrets.sh makes no {}", local.display());
        secret_files.insert(format!("/run/secrets/{name}"), local.display().to_string());
    }
    let localize = |text: &str| {
        secret_files.iter().fold(text.to_owned(), |text, (mounted, local)| text.replace(mounted.as_str(), local))
    };

    // The environment, with the addresses moved here and nothing else changed.
    let compose_env = environment(kafka);
    let mut env = compose_env.clone();
    let bound = listeners(env.get("KAFKA_LISTENERS").expect("KAFKA_LISTENERS"));
    let network = KafkaNetwork::new(kafka, &bound);
    let rebound: Vec<String> =
        bound.iter().map(|(name, _, port)| format!("{name}://127.0.0.1:{}", network.ports[port])).collect();
    env.insert("KAFKA_LISTENERS".to_owned(), rebound.join(","));
    let advertised = env.get("KAFKA_ADVERTISED_LISTENERS").expect("KAFKA_ADVERTISED_LISTENERS");
    let advertised: Vec<String> = listeners(advertised)
        .iter()
        .map(|(name, host, port)| format!("{name}://{}", network.advertised(host, *port)))
        .collect();
    env.insert("KAFKA_ADVERTISED_LISTENERS".to_owned(), advertised.join(","));
    if let Some(voters) = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS").cloned() {
        let voters: Vec<String> = voters
            .split(',')
            .map(|voter| {
                let (id, address) =
                    voter.split_once('@').unwrap_or_else(|| panic!("voter {voter:?} is not ID@HOST:PORT"));
                format!("{id}@{}", network.via_containers(address))
            })
            .collect();
        env.insert("KAFKA_CONTROLLER_QUORUM_VOTERS".to_owned(), voters.join(","));
    }
    let log_dirs = env.get("KAFKA_LOG_DIRS").cloned().unwrap_or_default();
    let data: Vec<String> = log_dirs
        .split(',')
        .enumerate()
        .map(|(i, _)| dir.path().join(format!("data-{i}")).display().to_string())
        .collect();
    env.insert("KAFKA_LOG_DIRS".to_owned(), data.join(","));
    for value in env.values_mut() {
        *value = localize(value);
    }

    let java = |command: &mut Command| {
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).current_dir(dir.path());
        if let Some(home) = std::env::var_os("JAVA_HOME") {
            command.env("JAVA_HOME", home);
        }
    };
    let mut setup = Command::new("java");
    java(&mut setup);
    let setup = setup
        .args(["-Xms64m", "-Xmx256m", "-cp", &classpath, "kafka.docker.KafkaDockerWrapper", "setup"])
        .arg("--default-configs-dir")
        .arg(&defaults)
        .arg("--mounted-configs-dir")
        .arg(&mounted)
        .arg("--final-configs-dir")
        .arg(&config)
        .envs(&env)
        .output()
        .expect("java runs the image's configuration step");
    assert!(
        setup.status.success(),
        "the image's configuration step (KafkaDockerWrapper setup) failed on compose's settings:\n{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );

    let properties = config.join("server.properties");
    let out = std::fs::File::create(dir.path().join("process.out")).expect("the broker's output file");
    let mut broker = Command::new("java");
    java(&mut broker);
    let mut child = broker
        .args(["-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
        .arg(format!("-Dkafka.logs.dir={}", dir.path().display()))
        .arg(format!("-Dlog4j2.configurationFile={}", root().join("deploy/kafka/log4j2.properties").display()))
        .args(["-cp", &classpath, "kafka.Kafka"])
        .arg(&properties)
        .stdout(out.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("java starts Kafka");

    // The services' bootstrap address, as they reach it in the staging network.
    let service_brokers =
        environment(&all["order-svc"]).get("KAFKA_BROKERS").cloned().expect("order-svc KAFKA_BROKERS");
    let internal = network.via_containers(&service_brokers);
    let internal_port = port_of(&internal).expect("a port");
    let logs = |lines| {
        format!(
            "server.log:\n{}\nprocess output:\n{}",
            tail(&dir.path().join("server.log"), lines),
            tail(&dir.path().join("process.out"), lines)
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(&internal).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("Kafka on compose's settings exited ({status}):\n{}", logs(40));
        }
        assert!(Instant::now() < deadline, "Kafka on compose's settings does not listen on {internal}:\n{}", logs(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The BROKER listener, where the admin certificate is a super user.
    let inter_broker = compose_env.get("KAFKA_INTER_BROKER_LISTENER_NAME").cloned().unwrap_or_default();
    let broker_port = bound
        .iter()
        .find(|(name, _, _)| *name == inter_broker)
        .map(|(_, _, port)| network.ports[port])
        .expect("the inter-broker listener is bound");
    let secure = saga_tests::broker::Secure { secrets: secrets.clone(), broker_port };
    let broker = saga_tests::Broker::adopt_kafka(child, internal_port, dir.path(), Some(secure)).await;

    // Every setting it was given is one Kafka knows, and took effect as given.
    let given = parse_properties(&std::fs::read_to_string(&properties).expect("the final server.properties"));
    let taken = kafka_config_dump(&std::fs::read_to_string(dir.path().join("server.log")).expect("server.log"));
    let mut ignored = Vec::new();
    for (key, value) in &given {
        // Per-listener settings (listener.name.NAME.*) and the authorizer's own
        // are not in Kafka's dump; the setup job and the saga below, each
        // service as its own principal, exercise them.
        if key.starts_with("listener.name.")
            || ["super.users", "allow.everyone.if.no.acl.found"].contains(&key.as_str())
        {
            continue;
        }
        match taken.get(key) {
            None => ignored.push(format!("{key}={value} is no setting of Kafka {}", deployment.kafka_version)),
            Some(actual) if normalized(actual) != normalized(value) => {
                ignored.push(format!("{key}={value}, but Kafka runs with {actual}"))
            }
            Some(_) => {}
        }
    }
    assert!(ignored.is_empty(), "Kafka did not take compose's settings as given:\n  - {}", ignored.join("\n  - "));

    // The health check passes: the script's tool, on the address it asks.
    let check = healthcheck_words(kafka);
    let words: Vec<&str> = check.get(1).map(|c| c.split_whitespace().collect()).unwrap_or_default();
    let tools = [("/opt/kafka/bin/kafka-broker-api-versions.sh", "org.apache.kafka.tools.BrokerApiVersionsCommand")];
    let class = tools.iter().find(|(script, _)| words.first() == Some(script)).map(|(_, class)| *class);
    let class = class.unwrap_or_else(|| panic!("kafka health check {check:?}: add its script's class to this test"));
    let args: Vec<String> = words[1..]
        .iter()
        .take_while(|w| !w.starts_with('>') && !w.starts_with('|') && **w != "&&")
        .map(|w| {
            if host_port(w).is_some() {
                network.via_containers(w)
            } else if let Some(volume) = mount(kafka, w) {
                // A mounted client config: the file, its secrets' paths moved here.
                let source = volume["source"].as_str().expect("a bind mount's source");
                let text = localize(&std::fs::read_to_string(source).expect("the mounted file"));
                let local = dir.path().join(Path::new(w).file_name().expect("a file name"));
                std::fs::write(&local, text).expect("write the localized file");
                local.display().to_string()
            } else {
                (*w).to_owned()
            }
        })
        .collect();
    let mut health = Command::new("java");
    java(&mut health);
    let health =
        health.args(["-Xms64m", "-Xmx256m", "-cp", &classpath, class]).args(&args).output().expect("java runs");
    assert!(
        health.status.success(),
        "kafka's health check ({class} {args:?}) fails: {}",
        String::from_utf8_lossy(&health.stderr)
    );

    // The kafka-setup job, as compose runs it: its script, with Kafka's tools
    // from the jars here and its secrets under the names compose mounts them.
    let setup = &all["kafka-setup"];
    let script = string_list(&setup["entrypoint"]).last().cloned().expect("kafka-setup's script");
    let script = mount(setup, &script).and_then(|v| v["source"].as_str()).expect("the script is mounted").to_owned();
    let (tools, mounted_secrets) = (dir.path().join("kafka-bin"), dir.path().join("run-secrets"));
    std::fs::create_dir_all(&tools).expect("a tools dir");
    std::fs::create_dir_all(&mounted_secrets).expect("a secrets dir");
    for (script, class) in [
        ("kafka-configs.sh", "org.apache.kafka.tools.ConfigCommand"),
        ("kafka-acls.sh", "org.apache.kafka.tools.AclCommand"),
    ] {
        let shim = format!(
            "#!/bin/sh\nKAFKA_HEAP_OPTS='-Xms64m -Xmx256m -XX:TieredStopAtLevel=1' exec '{}' tool {class} \"$@\"\n",
            root().join("scripts/kafka.sh").display()
        );
        let path = tools.join(script);
        std::fs::write(&path, shim).expect("write a tool shim");
        let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(&path, executable).expect("make the shim executable");
    }
    for secret in setup["secrets"].as_array().into_iter().flatten() {
        let name = secret["source"].as_str().expect("a secret's name");
        let local = &secret_files[&format!("/run/secrets/{name}")];
        std::fs::copy(local, mounted_secrets.join(name)).expect("copy a secret");
    }
    let mut setup_env = environment(setup);
    let bootstrap = setup_env.get("KAFKA_SETUP_BOOTSTRAP").cloned().expect("KAFKA_SETUP_BOOTSTRAP");
    setup_env.insert("KAFKA_SETUP_BOOTSTRAP".to_owned(), network.via_containers(&bootstrap));
    setup_env.insert("KAFKA_TOOLS".to_owned(), tools.display().to_string());
    setup_env.insert("KAFKA_SETUP_SECRETS".to_owned(), mounted_secrets.display().to_string());
    let acls = mount(setup, "/mnt/setup/acls.txt").and_then(|v| v["source"].as_str()).expect("acls.txt is mounted");
    setup_env.insert("KAFKA_SETUP_ACLS".to_owned(), acls.to_owned());
    let mut job = Command::new("bash");
    java(&mut job);
    let job = job.arg(&script).envs(&setup_env).output().expect("bash runs the kafka-setup script");
    assert!(
        job.status.success(),
        "the kafka-setup job fails: {}{}",
        String::from_utf8_lossy(&job.stdout),
        String::from_utf8_lossy(&job.stderr)
    );

    // The topics job, as compose runs it: as the operator.
    let topics = &all["topics"];
    let topics_env = environment(topics);
    let job_brokers = network.via_containers(topics_env.get("KAFKA_BROKERS").expect("the topics job's KAFKA_BROKERS"));
    let command = string_list(&topics["command"]);
    let mut argv = vec!["shopctl".to_owned(), "--brokers".to_owned(), job_brokers];
    for (var, flag) in [
        ("KAFKA_SECURITY_PROTOCOL", "--kafka-security-protocol"),
        ("KAFKA_SASL_USERNAME", "--kafka-sasl-username"),
        ("KAFKA_SASL_PASSWORD_FILE", "--kafka-sasl-password-file"),
        ("KAFKA_SSL_CA_LOCATION", "--kafka-ssl-ca-location"),
    ] {
        if let Some(value) = topics_env.get(var) {
            argv.extend([flag.to_owned(), localize(value)]);
        }
    }
    argv.extend(command.into_iter().skip(1));
    let cli = <shopctl::cli::Cli as clap::Parser>::try_parse_from(&argv).expect("the topics job's command line parses");
    shopctl::run(cli).await.unwrap_or_else(|e| panic!("the topics job ({argv:?}) fails: {e:#}"));

    let mut stack = saga_tests::Stack::start_on(
        broker,
        saga_tests::Databases::new(saga_tests::Backend::Postgres),
        saga_tests::Options::default(),
    )
    .await;
    let saga = std::panic::AssertUnwindSafe(async {
        stack.register_user("ada").await;
        stack.create_product("MUG", 1250, 10).await;
        stack.place_order("order-staging", "ada", &[("MUG", 2)], "tok_visa").await;
        stack.wait_order("order-staging", "CONFIRMED", Duration::from_secs(60)).await;
    });
    if let Err(panic) = futures::FutureExt::catch_unwind(saga).await {
        eprintln!("{}", stack.broker.log_tail(40));
        std::panic::resume_unwind(panic);
    }

    // A client on the host (shopctl --brokers localhost:9094) sees the order too,
    // through the EXTERNAL listener.
    let (external_host, external_port) = listeners(&compose_env["KAFKA_ADVERTISED_LISTENERS"])
        .into_iter()
        .find(|(_, host, _)| host != "kafka")
        .map(|(_, host, port)| (host, port))
        .expect("a listener advertised to the host");
    let external = network.advertised(&external_host, external_port);
    let operator = stack.broker.security_for(events::access::OPERATOR).connect(&external).expect("the operator");
    let records = saga_tests::stack::read_topic_at(&operator, events::topics::ORDER_EVENTS).await;
    assert!(
        records.iter().any(|r| r.key() == Some(b"order-staging".as_slice())),
        "the order's events are not visible through the listener advertised to the host ({external})"
    );
    stack.stop().await;
}
