#!/bin/sh
# Makes what the manifests need to authenticate: a private CA, the colony's server
# certificate, the agents' client certificate and the tokens; writes them to OUT_DIR
# with secrets.yaml, the four Secrets for `kubectl apply -f`.
#
#   deploy/kubernetes/make-secrets.sh OUT_DIR
#   kubectl apply -f OUT_DIR/secrets.yaml
#
# CORAL_NAMESPACE (default coral) is the namespace of the Secrets and of the colony's
# DNS names; CORAL_CERT_DAYS (default 365) how long the certificates last. The colony's
# certificate is valid for coral-colony, coral-colony.NAMESPACE.svc(.cluster.local),
# and localhost / 127.0.0.1 (for `kubectl port-forward`). Keep OUT_DIR private: it
# holds the CA key and every token. Needs openssl and base64.
set -eu

out=${1:?usage: make-secrets.sh OUT_DIR}
ns=${CORAL_NAMESPACE:-coral}
days=${CORAL_CERT_DAYS:-365}
umask 077
mkdir -p "$out"
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The CA: signs the colony's certificate and the agents'.
key ca.key
openssl req -x509 -new -key ca.key -out ca.crt -days "$days" -subj "/CN=Coral CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

# leaf NAME CN EXTENSIONS: a key and a certificate signed by the CA.
leaf() {
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$1.crt" -days "$days" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf colony coral-colony "subjectAltName=DNS:coral-colony,DNS:coral-colony.$ns.svc,DNS:coral-colony.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf agent coral-agent "extendedKeyUsage=clientAuth"

# Tokens: `read` for queries, `operate` to start and cancel triggers, `agent` for agents.
for role in read operate agent; do
  openssl rand -hex 32 > "$role.token"
done
printf 'read %s\noperate %s\nagent %s\n' \
  "$(cat read.token)" "$(cat operate.token)" "$(cat agent.token)" > tokens

b64() { base64 < "$1" | tr -d '\n'; }
# secret NAME KEY=FILE...: a Secret holding each FILE under KEY.
secret() {
  name=$1
  shift
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: Opaque\ndata:\n' "$name" "$ns"
  for pair in "$@"; do
    printf '  %s: %s\n' "${pair%%=*}" "$(b64 "${pair#*=}")"
  done
}
{
  secret coral-colony-tls tls.crt=colony.crt tls.key=colony.key ca.crt=ca.crt
  secret coral-agent-tls tls.crt=agent.crt tls.key=agent.key ca.crt=ca.crt
  secret coral-tokens tokens=tokens
  secret coral-agent-token token=agent.token
} > secrets.yaml

cat <<EOF
Wrote $out/secrets.yaml (Secrets coral-colony-tls, coral-agent-tls, coral-tokens,
coral-agent-token in namespace $ns). Apply it with: kubectl apply -f $out/secrets.yaml
To query from your machine: kubectl -n $ns port-forward svc/coral-colony 7070:7070, then
  export CORAL_COLONY=https://localhost:7070 CORAL_TLS_CA=$out/ca.crt
  export CORAL_TOKEN=\$(cat $out/read.token)      # or operate.token to start triggers
EOF
