#!/bin/sh
# Makes the TLS material of openlines' NATS: a CA, one server certificate (client
# port and cluster routes of every node) and, with --client, a client
# certificate for the services. Needs openssl.
#
#   deploy/nats/make-certs.sh <dir> [extra DNS names or IPs ...]
#
# writes <dir>/ca.pem, ca-key.pem (keep it offline: it signs), server.pem,
# server-key.pem, client.pem, client-key.pem. The server certificate names
# nats, nats1-3 (compose), the Helm chart's service and pod names in the
# namespace $OPENLINES_NAMESPACE (default openlines), localhost and 127.0.0.1,
# plus whatever is given after <dir>. Valid $OPENLINES_CERT_DAYS days (default
# 825). Rotation: docs/operations.md, "NATS keys and certificates".
set -eu

dir=${1:?usage: make-certs.sh <dir> [extra DNS names or IPs ...]}
shift
ns=${OPENLINES_NAMESPACE:-openlines}
days=${OPENLINES_CERT_DAYS:-825}
mkdir -p "$dir"
cd "$dir"
umask 077

if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -out ca.pem \
    -days 3650 -subj "/O=openlines/CN=openlines NATS CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "wrote $dir/ca.pem (and ca-key.pem: keep it safe)"
else
  echo "kept the CA in $dir/ca.pem"
fi

san="DNS:nats,DNS:nats1,DNS:nats2,DNS:nats3,DNS:localhost,IP:127.0.0.1"
san="$san,DNS:nats.$ns,DNS:nats.$ns.svc,DNS:nats.$ns.svc.cluster.local"
san="$san,DNS:*.nats-headless.$ns.svc,DNS:*.nats-headless.$ns.svc.cluster.local,DNS:*.nats-headless"
for extra in "$@"; do
  case "$extra" in
    *[!0-9.]*) san="$san,DNS:$extra" ;;
    *) san="$san,IP:$extra" ;;
  esac
done

issue() {  # name, subject, extended key usage, SAN (or "")
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1-key.pem" -out "$1.csr" -subj "$2" 2>/dev/null
  ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$3"
  [ -n "$4" ] && ext="$ext
subjectAltName=$4"
  printf '%s\n' "$ext" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out "$1.pem" -days "$days" \
    -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  echo "wrote $dir/$1.pem"
}

# serverAuth and clientAuth: the same certificate serves clients and routes (a route is a client of the other node).
issue server "/O=openlines/CN=nats" "serverAuth,clientAuth" "$san"
issue client "/O=openlines/CN=openlines-service" "clientAuth" ""
rm -f ca.srl
# Servers and services run as other users (uid 10001 in the images): the certificates may be read, the keys by their owner.
chmod 644 ca.pem server.pem client.pem
