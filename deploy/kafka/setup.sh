#!/usr/bin/env bash
# The staging stack's kafka-setup job (compose.yaml), in the apache/kafka image,
# once Kafka is healthy and before anything else talks to it: creates the SCRAM
# user of the operator and of each service from its password secret, then grants
# the ACLs of deploy/kafka/acls.txt (the output of `shopctl acls`). As the admin
# certificate (a super user) on the BROKER listener (TLS, client certificate
# required): SCRAM users cannot authenticate before they exist. Run again, it
# sets the same passwords and adds nothing new (ACLs that exist are kept).
#
# Knobs (the defaults are compose's): KAFKA_TOOLS (/opt/kafka/bin),
# KAFKA_SETUP_BOOTSTRAP (kafka:9095), KAFKA_SETUP_SECRETS (/run/secrets: kafka-ca,
# kafka-admin, kafka-<principal>-password), KAFKA_SETUP_ACLS (/mnt/setup/acls.txt).
set -euo pipefail

tools=${KAFKA_TOOLS:-/opt/kafka/bin}
bootstrap=${KAFKA_SETUP_BOOTSTRAP:-kafka:9095}
secrets=${KAFKA_SETUP_SECRETS:-/run/secrets}
acls=${KAFKA_SETUP_ACLS:-/mnt/setup/acls.txt}

config=$(mktemp)
trap 'rm -f "$config"' EXIT
printf '%s\n' "security.protocol=SSL" "ssl.keystore.type=PEM" "ssl.keystore.location=$secrets/kafka-admin" \
    "ssl.truststore.type=PEM" "ssl.truststore.location=$secrets/kafka-ca" >"$config"

users=0
for file in "$secrets"/kafka-*-password; do
    principal=$(basename "$file")
    principal=${principal#kafka-}
    principal=${principal%-password}
    # The password goes on the tool's command line: inside this short-lived
    # container only, and never echoed.
    "$tools/kafka-configs.sh" --bootstrap-server "$bootstrap" --command-config "$config" --alter \
        --entity-type users --entity-name "$principal" \
        --add-config "SCRAM-SHA-512=[password=$(cat "$file")]" >/dev/null
    users=$((users + 1))
done
echo "kafka-setup: $users SCRAM users"

# One ACL tool run per line; the lines have no wildcards, so no globbing either.
set -f
grants=0
while read -r line; do
    [ -n "$line" ] || continue
    # shellcheck disable=SC2086 # each word of the line is one argument
    "$tools/kafka-acls.sh" --bootstrap-server "$bootstrap" --command-config "$config" $line >/dev/null
    grants=$((grants + 1))
done <"$acls"
echo "kafka-setup: $grants ACL grants"
