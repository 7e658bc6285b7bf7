//! Who may do what on the broker: the one table of which topics each service
//! consumes and produces. The services subscribe to exactly [`ServiceAccess::consumes`]
//! (their `build` passes it to `App::consume`), and the broker's ACLs are derived
//! from the same table ([`acl_commands`], printed by `shopctl acls`), so a service
//! cannot be given an input the ACLs do not let it read, nor the ACLs drift from
//! what the services do.
//!
//! Each service authenticates as its own principal, named like the service and
//! its consumer group (`order-svc`), and may:
//! - read its inputs and its replay topic `<service>.replay`, in its own group;
//! - write its events topic and its dead-letter topic `<service>.dlq` (Write on
//!   a topic also lets its idempotent producer get a producer id: Kafka asks for
//!   IdempotentWrite on the cluster *or* Write on some topic).
//!
//! The operator (shopctl, principal [`OPERATOR`]) writes the commands topics and
//! the replay topics (DLQ replay), reads and creates every topic, and may look
//! at the services' groups' offsets and use its own reader groups
//! ([`OPERATOR_GROUP_PREFIX`]). Nobody else writes a service's events.

use crate::topics;

/// A service's rights on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAccess {
    /// The service, its principal and its consumer group.
    pub service: &'static str,
    /// The topics it consumes (besides its replay topic).
    pub consumes: &'static [&'static str],
    /// The topics it publishes its events to (besides its dead-letter topic).
    pub produces: &'static [&'static str],
}

pub const USER_SVC: ServiceAccess =
    ServiceAccess { service: "user-svc", consumes: &[topics::USER_COMMANDS], produces: &[topics::USER_EVENTS] };

pub const PRODUCT_SVC: ServiceAccess = ServiceAccess {
    service: "product-svc",
    consumes: &[topics::PRODUCT_COMMANDS],
    produces: &[topics::PRODUCT_EVENTS],
};

pub const ORDER_SVC: ServiceAccess = ServiceAccess {
    service: "order-svc",
    consumes: &[
        topics::ORDER_COMMANDS,
        topics::USER_EVENTS,
        topics::PRODUCT_EVENTS,
        topics::INVENTORY_EVENTS,
        topics::PAYMENT_EVENTS,
    ],
    produces: &[topics::ORDER_EVENTS],
};

pub const INVENTORY_SVC: ServiceAccess = ServiceAccess {
    service: "inventory-svc",
    consumes: &[topics::PRODUCT_EVENTS, topics::ORDER_EVENTS, topics::PAYMENT_EVENTS],
    produces: &[topics::INVENTORY_EVENTS],
};

pub const PAYMENT_SVC: ServiceAccess = ServiceAccess {
    service: "payment-svc",
    consumes: &[topics::INVENTORY_EVENTS, topics::ORDER_EVENTS],
    produces: &[topics::PAYMENT_EVENTS],
};

pub const NOTIFICATION_SVC: ServiceAccess = ServiceAccess {
    service: "notification-svc",
    consumes: &[topics::USER_EVENTS, topics::ORDER_EVENTS, topics::PAYMENT_EVENTS],
    produces: &[topics::NOTIFICATION_EVENTS],
};

/// Every service, in the order the saga meets them.
pub const SERVICES: &[ServiceAccess] =
    &[USER_SVC, PRODUCT_SVC, ORDER_SVC, INVENTORY_SVC, PAYMENT_SVC, NOTIFICATION_SVC];

/// The principal of shopctl, the operator's tool.
pub const OPERATOR: &str = "operator";

/// The consumer groups of the operator's readers (`shopctl order timeline`,
/// `dlq list`, ...) start with this. They assign partitions by hand and never
/// commit, but librdkafka still looks up their group's coordinator, which
/// takes Describe on the group.
pub const OPERATOR_GROUP_PREFIX: &str = "shopctl-";

/// A service's rights by name.
pub fn service(name: &str) -> Option<&'static ServiceAccess> {
    SERVICES.iter().find(|s| s.service == name)
}

impl ServiceAccess {
    /// Everything it reads: its inputs and its replay topic.
    pub fn reads(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.consumes.iter().map(|t| (*t).to_owned()).collect();
        topics.push(topics::replay(self.service));
        topics
    }

    /// Everything it writes: its events and its dead letters.
    pub fn writes(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.produces.iter().map(|t| (*t).to_owned()).collect();
        topics.push(topics::dead_letter(self.service));
        topics
    }

    /// Every topic it touches: what it must find on the broker at start-up.
    pub fn topics(&self) -> Vec<String> {
        let mut topics = self.reads();
        topics.extend(self.writes());
        topics
    }
}

/// The catalogue topics no service produces: the commands, which come from
/// outside (shopctl, as the operator).
pub fn command_topics() -> Vec<&'static str> {
    topics::ALL.iter().copied().filter(|t| !SERVICES.iter().any(|s| s.produces.contains(t))).collect()
}

/// Every topic of the system: the catalogue, and each service's dead-letter and
/// replay topics.
pub fn all_topics() -> Vec<String> {
    let mut all: Vec<String> = topics::ALL.iter().map(|t| (*t).to_owned()).collect();
    for service in SERVICES {
        all.push(topics::dead_letter(service.service));
        all.push(topics::replay(service.service));
    }
    all
}

/// The arguments of Kafka's ACL tool (`kafka-acls.sh`, class
/// `org.apache.kafka.tools.AclCommand`) that grant exactly this table, one
/// invocation per list, to be run after `--bootstrap-server ... --command-config
/// ...` as a super user. All resources are literal names; there are no
/// wildcards, so the lines need no shell quoting. Adding an ACL that exists is a
/// no-op, so they can be applied again.
pub fn acl_commands() -> Vec<Vec<String>> {
    fn grant(principal: &str, operations: &[&str], resources: &[(&str, String)]) -> Vec<String> {
        let mut args = vec!["--add".to_owned(), "--allow-principal".to_owned(), format!("User:{principal}")];
        for operation in operations {
            args.extend(["--operation".to_owned(), (*operation).to_owned()]);
        }
        for (kind, name) in resources {
            args.extend([format!("--{kind}"), name.clone()]);
        }
        args
    }
    let topic = |name: &str| ("topic", name.to_owned());
    let mut commands = Vec::new();
    for access in SERVICES {
        // Read on a topic implies Describe; Read on its group lets it join,
        // fetch and commit offsets there.
        let mut reads: Vec<(&str, String)> = access.reads().iter().map(|t| topic(t)).collect();
        reads.push(("group", access.service.to_owned()));
        commands.push(grant(access.service, &["Read"], &reads));
        let writes: Vec<(&str, String)> = access.writes().iter().map(|t| topic(t)).collect();
        commands.push(grant(access.service, &["Write"], &writes));
    }
    let mut operator_writes: Vec<(&str, String)> = command_topics().into_iter().map(topic).collect();
    operator_writes.extend(SERVICES.iter().map(|s| topic(&topics::replay(s.service))));
    commands.push(grant(OPERATOR, &["Write"], &operator_writes));
    let every_topic: Vec<(&str, String)> = all_topics().iter().map(|t| topic(t)).collect();
    commands.push(grant(OPERATOR, &["Read", "Create"], &every_topic));
    let groups: Vec<(&str, String)> = SERVICES.iter().map(|s| ("group", s.service.to_owned())).collect();
    commands.push(grant(OPERATOR, &["Describe"], &groups));
    let mut readers = vec!["--resource-pattern-type".to_owned(), "prefixed".to_owned()];
    readers.extend(grant(OPERATOR, &["Describe"], &[("group", OPERATOR_GROUP_PREFIX.to_owned())]));
    // `--add` first, as on every other line.
    readers.rotate_left(2);
    commands.push(readers);
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_exactly_one_writer_and_a_reader() {
        for topic in topics::ALL {
            let producers: Vec<&str> =
                SERVICES.iter().filter(|s| s.produces.contains(topic)).map(|s| s.service).collect();
            let by_operator = command_topics().contains(topic);
            assert_eq!(producers.len() + usize::from(by_operator), 1, "{topic}: {producers:?}, operator {by_operator}");
            if !topic.ends_with(".commands") {
                assert!(!by_operator, "{topic} is no commands topic, yet no service produces it");
            }
        }
        // Each message's topic is one somebody may write.
        for spec in crate::CATALOGUE {
            assert!(topics::ALL.contains(&spec.topic), "{} goes to {}", spec.event_type, spec.topic);
        }
    }

    #[test]
    fn the_acls_grant_the_table_and_nothing_more() {
        let commands: Vec<String> = acl_commands().iter().map(|c| c.join(" ")).collect();
        assert!(commands.contains(
            &"--add --allow-principal User:payment-svc --operation Write --topic payment.events --topic payment-svc.dlq"
                .to_owned()
        ));
        assert!(commands.contains(
            &"--add --allow-principal User:payment-svc --operation Read --topic inventory.events --topic order.events \
              --topic payment-svc.replay --group payment-svc"
                .to_owned()
        ));
        // Only its owner writes a service's events.
        for line in &commands {
            if line.contains("--operation Write") && line.contains("--topic order.events") {
                assert!(line.starts_with("--add --allow-principal User:order-svc "), "{line}");
            }
            assert!(!line.contains('*'), "no wildcards: {line}");
        }
        assert_eq!(commands.len(), SERVICES.len() * 2 + 4);
    }
}
