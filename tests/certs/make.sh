#!/usr/bin/env bash
# Makes the test certificates (ECDSA P-256, valid for a century): a CA, a server certificate
# for legate.test, *.legate.test, localhost and 127.0.0.1 and a client certificate, both
# signed by it, and a second CA that signed neither. The tests and interop configs read the
# committed files; run this only to replace them.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
    key "$1-key.pem"
    openssl req -x509 -new -key "$1-key.pem" -days $days -subj "/CN=$2" -out "$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() {
    key "$1-key.pem"
    openssl req -new -key "$1-key.pem" -subj "/CN=$2" -out "$1.csr"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$3" "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days $days -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm "$1.csr" "$1.ext"
}
ca ca "legate test CA"
ca other-ca "another test CA"
leaf server legate.test serverAuth "DNS:legate.test,DNS:*.legate.test,DNS:localhost,IP:127.0.0.1"
leaf client client.legate.test clientAuth "DNS:client.legate.test"
rm -f ca.srl ca-key.pem other-ca-key.pem
