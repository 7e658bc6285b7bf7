//! How a client reaches the brokers and proves who it is. Plaintext is for the
//! local one-command system on loopback only; everywhere else (staging, its
//! tests) clients speak SASL_SSL: SCRAM-SHA-512 over TLS, one principal per
//! service and one for the operator (shopctl), each allowed only what the ACLs
//! derived from `events::access` grant it.
//!
//! The settings come from the environment or flags ([`KafkaSecurityArgs`], flattened
//! into every service's config and shopctl's); the password from
//! `KAFKA_SASL_PASSWORD` or, better, a file (`KAFKA_SASL_PASSWORD_FILE`, a compose
//! secret). [`KafkaSecurityArgs::connect`] checks them once, at start-up, and every
//! client's settings come from [`Connection::client_config`]. The password never
//! reaches a log: [`Secret`] prints as `***`, and rdkafka's own `Debug` of a
//! `ClientConfig` leaves out `sasl.password`.

use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::config::ClientConfig;

use crate::Error;

/// The SASL mechanism of every secure client: the broker stores only salted
/// SCRAM hashes, and the password never crosses the wire.
pub const SASL_MECHANISM: &str = "SCRAM-SHA-512";

/// `KAFKA_SECURITY_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No TLS, no authentication: the local loopback system only.
    #[default]
    Plaintext,
    /// SCRAM-SHA-512 over TLS (staging and its tests).
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

/// A password: compared and handed to librdkafka, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (the client settings).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::new(value))
    }
}

/// The Kafka security settings as given (flags or environment), before they are
/// checked: flattened into [`crate::PlatformConfig`] and shopctl's command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaSecurityArgs {
    /// `plaintext` (the default: the local loopback system only) or `sasl_ssl`
    /// (SCRAM-SHA-512 over TLS; needs KAFKA_SASL_USERNAME, a password and
    /// KAFKA_SSL_CA_LOCATION).
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value = "plaintext",
        global = true
    )]
    pub protocol: SecurityProtocol,

    /// SASL_SSL: the principal this program authenticates as (a service's own
    /// name, or the operator's for shopctl).
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME", global = true)]
    pub username: Option<String>,

    /// SASL_SSL: the principal's password. Prefer KAFKA_SASL_PASSWORD_FILE: a
    /// value in the environment is visible to whoever can inspect the process.
    #[arg(long = "kafka-sasl-password", env = "KAFKA_SASL_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<Secret>,

    /// SASL_SSL: a file holding the principal's password (a compose secret, e.g.
    /// /run/secrets/kafka_order_svc_password); one trailing newline is ignored.
    /// Read once at start-up.
    #[arg(long = "kafka-sasl-password-file", env = "KAFKA_SASL_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,

    /// SASL_SSL: PEM file of the certificate authority that signed the brokers'
    /// certificates. Required: the brokers' names are verified against it.
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION", global = true)]
    pub ca_location: Option<PathBuf>,
}

impl KafkaSecurityArgs {
    /// Plaintext, whatever the environment says (tests start from this).
    pub fn plaintext() -> KafkaSecurityArgs {
        KafkaSecurityArgs::default()
    }

    /// SASL_SSL as `username`, the password read from `password_file`.
    pub fn sasl_ssl(username: &str, password_file: &Path, ca_location: &Path) -> KafkaSecurityArgs {
        KafkaSecurityArgs {
            protocol: SecurityProtocol::SaslSsl,
            username: Some(username.to_owned()),
            password: None,
            password_file: Some(password_file.to_owned()),
            ca_location: Some(ca_location.to_owned()),
        }
    }

    /// Checks the settings and reads the password file: a bad combination is an
    /// error naming the setting, so that a service refuses to start rather than
    /// fall back to something weaker.
    pub fn connect(&self, brokers: &str) -> Result<Connection, Error> {
        let security = match self.protocol {
            SecurityProtocol::Plaintext => {
                let given: Vec<&str> = [
                    self.username.as_ref().map(|_| "KAFKA_SASL_USERNAME"),
                    self.password.as_ref().map(|_| "KAFKA_SASL_PASSWORD"),
                    self.password_file.as_ref().map(|_| "KAFKA_SASL_PASSWORD_FILE"),
                    self.ca_location.as_ref().map(|_| "KAFKA_SSL_CA_LOCATION"),
                ]
                .into_iter()
                .flatten()
                .collect();
                // Credentials without the protocol that uses them are a half-done
                // configuration: running plaintext would ignore them silently.
                if !given.is_empty() {
                    return Err(config_error(format!(
                        "{} set, but KAFKA_SECURITY_PROTOCOL is plaintext; set KAFKA_SECURITY_PROTOCOL=sasl_ssl \
                         (or unset them for the local plaintext system)",
                        given.join(", ")
                    )));
                }
                Security::Plaintext
            }
            SecurityProtocol::SaslSsl => {
                let username = self.username.clone().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
                    config_error(
                        "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_USERNAME (the principal to authenticate as)",
                    )
                })?;
                let password =
                    match (&self.password, &self.password_file) {
                        (Some(_), Some(_)) => {
                            return Err(config_error("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both"))
                        }
                        (Some(password), None) => password.clone(),
                        (None, Some(file)) => read_password(file)?,
                        (None, None) => return Err(config_error(
                            "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SASL_PASSWORD_FILE (or KAFKA_SASL_PASSWORD)",
                        )),
                    };
                if password.expose().is_empty() {
                    return Err(config_error(format!("the Kafka password of {username} is empty")));
                }
                let ca_location = self.ca_location.clone().ok_or_else(|| {
                    config_error(
                        "KAFKA_SECURITY_PROTOCOL=sasl_ssl needs KAFKA_SSL_CA_LOCATION (PEM file of the CA that signed \
                         the brokers' certificates)",
                    )
                })?;
                if let Err(error) = std::fs::File::open(&ca_location) {
                    return Err(config_error(format!(
                        "cannot read KAFKA_SSL_CA_LOCATION {}: {error}",
                        ca_location.display()
                    )));
                }
                Security::SaslSsl { username, password, ca_location }
            }
        };
        Ok(Connection { brokers: brokers.to_owned(), security })
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::Config(message.into())
}

fn read_password(file: &Path) -> Result<Secret, Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| config_error(format!("cannot read KAFKA_SASL_PASSWORD_FILE {}: {error}", file.display())))?;
    // Editors and `echo` end files with a newline; a password never does.
    let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    Ok(Secret::new(password))
}

/// Checked security settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    Plaintext,
    SaslSsl { username: String, password: Secret, ca_location: PathBuf },
}

/// Where the brokers are and how to talk to them: what every client is built
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    pub security: Security,
}

impl Connection {
    /// Plaintext to `brokers` (the local system, and test brokers without a
    /// secure listener).
    pub fn plaintext(brokers: &str) -> Connection {
        Connection { brokers: brokers.to_owned(), security: Security::Plaintext }
    }

    /// Who the broker sees: the SASL username, or `ANONYMOUS` on plaintext
    /// (Kafka's name for an unauthenticated client). For logs and errors.
    pub fn principal(&self) -> &str {
        match &self.security {
            Security::Plaintext => "ANONYMOUS",
            Security::SaslSsl { username, .. } => username,
        }
    }

    pub fn is_secure(&self) -> bool {
        matches!(self.security, Security::SaslSsl { .. })
    }

    /// Settings shared by every client. `enable.metrics.push` must be off: Tansu
    /// does not implement KIP-714 telemetry and librdkafka would log errors
    /// forever.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.metrics.push", "false")
            .set("socket.keepalive.enable", "true")
            .set("reconnect.backoff.max.ms", "2000");
        if let Security::SaslSsl { username, password, ca_location } = &self.security {
            config
                .set("security.protocol", "sasl_ssl")
                .set("sasl.mechanisms", SASL_MECHANISM)
                .set("sasl.username", username)
                .set("sasl.password", password.expose())
                .set("ssl.ca.location", ca_location.display().to_string())
                // librdkafka's default, spelled out: the broker's certificate must
                // name the host the client dialled, or anyone with a certificate
                // from the CA could pose as the broker.
                .set("ssl.endpoint.identification.algorithm", "https");
        }
        // librdkafka's own debug contexts (e.g. `cgrp,topic,fetch`), for diagnosing
        // group membership or fetch problems in the field.
        if let Ok(contexts) = std::env::var("KAFKA_DEBUG") {
            config.set("debug", contexts);
        }
        config
    }
}

impl fmt::Display for Connection {
    /// `brokers (protocol as principal)`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.security {
            Security::Plaintext => write!(f, "{} (plaintext)", self.brokers),
            Security::SaslSsl { username, .. } => write!(f, "{} (sasl_ssl as {username})", self.brokers),
        }
    }
}

/// Plaintext to these bootstrap servers: lets the loopback tests and tools pass
/// an address where a connection is expected.
impl From<&str> for Connection {
    fn from(brokers: &str) -> Connection {
        Connection::plaintext(brokers)
    }
}

impl From<&String> for Connection {
    fn from(brokers: &String) -> Connection {
        Connection::plaintext(brokers)
    }
}

impl From<&Connection> for Connection {
    fn from(connection: &Connection) -> Connection {
        connection.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(dir: &Path) -> KafkaSecurityArgs {
        let (password, ca) = (dir.join("password"), dir.join("ca.crt"));
        std::fs::write(&password, "s3cret\n").expect("write password");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write ca");
        KafkaSecurityArgs::sasl_ssl("order-svc", &password, &ca)
    }

    fn error(args: &KafkaSecurityArgs) -> String {
        args.connect("127.0.0.1:9092").expect_err("refused").to_string()
    }

    #[test]
    fn sasl_ssl_reads_the_password_file_and_never_prints_it() {
        let dir = tempfile::tempdir().expect("dir");
        let connection = sasl(dir.path()).connect("kafka:9092").expect("valid");
        let Security::SaslSsl { ref password, .. } = connection.security else { panic!("not sasl") };
        assert_eq!(password.expose(), "s3cret", "the trailing newline is not part of it");
        assert_eq!(connection.principal(), "order-svc");
        let config = connection.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        for shown in [format!("{connection:?}"), format!("{connection}"), format!("{config:?}")] {
            assert!(!shown.contains("s3cret"), "the password shows in {shown}");
        }
        let mut args = sasl(dir.path());
        args.password_file = None;
        args.password = Some(Secret::new("s3cret"));
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn bad_combinations_name_the_setting() {
        let dir = tempfile::tempdir().expect("dir");
        let mut args = sasl(dir.path());
        args.username = None;
        assert!(error(&args).contains("needs KAFKA_SASL_USERNAME"), "{}", error(&args));

        let mut args = sasl(dir.path());
        args.password_file = None;
        assert!(error(&args).contains("needs KAFKA_SASL_PASSWORD_FILE"), "{}", error(&args));

        let mut args = sasl(dir.path());
        args.password_file = Some(dir.path().join("missing"));
        assert!(error(&args).contains("cannot read KAFKA_SASL_PASSWORD_FILE"), "{}", error(&args));

        let mut args = sasl(dir.path());
        args.password = Some(Secret::new("x"));
        assert!(error(&args).contains("not both"), "{}", error(&args));

        let mut args = sasl(dir.path());
        args.ca_location = None;
        assert!(error(&args).contains("needs KAFKA_SSL_CA_LOCATION"), "{}", error(&args));

        let mut args = sasl(dir.path());
        args.ca_location = Some(dir.path().join("no-ca.crt"));
        assert!(error(&args).contains("cannot read KAFKA_SSL_CA_LOCATION"), "{}", error(&args));

        let mut args = sasl(dir.path());
        args.protocol = SecurityProtocol::Plaintext;
        let refused = error(&args);
        assert!(
            refused.contains("KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD_FILE, KAFKA_SSL_CA_LOCATION set"),
            "{refused}"
        );

        let plain = KafkaSecurityArgs::plaintext().connect("127.0.0.1:9092").expect("plaintext");
        assert_eq!(plain.client_config().get("security.protocol"), None);
        assert_eq!(plain.principal(), "ANONYMOUS");
    }
}
