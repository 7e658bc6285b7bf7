#!/usr/bin/env bash
# Makes the secrets of a secure Kafka (SASL_SSL with SCRAM-SHA-512, ACLs) in DIR,
# keeping whatever is already there (run it again to fill in what is missing):
#
#   ca.crt ca.key            a certificate authority of this deployment only
#   broker.pem               the broker's key and certificate (CN=kafka-broker; names
#                            kafka, localhost, 127.0.0.1 and $KAFKA_TLS_EXTRA_NAMES),
#                            for its TLS listeners and, as a client, for the
#                            controller and inter-broker listeners (mutual TLS)
#   admin.pem                a client key and certificate (CN=kafka-admin), a super
#                            user: creates the SCRAM users and the ACLs
#   <principal>.password     a SCRAM password for each of operator and the six services
#
#   deploy/kafka/secrets.sh deploy/secrets          (compose.yaml reads them there)
#
# Used by staging (docs/staging.md) and by the tests (tests/src/broker.rs), so both
# run the same kind of certificates. Needs openssl. The keys are unencrypted PKCS#8
# PEM (Kafka's PEM key store takes them without a key password); the directory is
# made private to its owner, while the files stay readable to the containers'
# unprivileged users, to which compose bind-mounts them one by one.
set -euo pipefail

dir=${1:?usage: secrets.sh DIR}
extra_names=${KAFKA_TLS_EXTRA_NAMES:-}
principals=(operator user-svc product-svc order-svc inventory-svc payment-svc notification-svc)
days=${KAFKA_TLS_DAYS:-825}

command -v openssl >/dev/null || { echo "secrets.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
        -subj "/CN=shop-saga Kafka CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# leaf NAME CN EXTENSIONS: NAME.pem holding the key and then the certificate.
leaf() {
    local name=$1 cn=$2 extensions=$3
    [ -s "$name.pem" ] && return 0
    openssl req -new -newkey rsa:2048 -nodes -keyout "$scratch/$name.key" -out "$scratch/$name.csr" \
        -subj "/CN=$cn" 2>/dev/null
    printf '%s\n' "$extensions" >"$scratch/$name.ext"
    openssl x509 -req -in "$scratch/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$scratch/$name.crt" -days "$days" -extfile "$scratch/$name.ext" 2>/dev/null
    cat "$scratch/$name.key" "$scratch/$name.crt" >"$name.pem"
}

names="DNS:kafka,DNS:localhost,IP:127.0.0.1"
for extra in ${extra_names//,/ }; do
    case "$extra" in
        *[!0-9.]*) names+=",DNS:$extra" ;;
        *) names+=",IP:$extra" ;;
    esac
done
leaf broker kafka-broker "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$names"
leaf admin kafka-admin "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

for principal in "${principals[@]}"; do
    # Hex: safe inside SCRAM's `password=...` and in any file or variable.
    [ -s "$principal.password" ] || openssl rand -hex 24 >"$principal.password"
done
rm -f ca.srl
chmod 600 ca.key
chmod 644 ca.crt broker.pem admin.pem ./*.password
echo "$(pwd)"
