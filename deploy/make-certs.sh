#!/usr/bin/env bash
# TLS material of the compose MinIO (HDH landing zone + platform object storage), made locally with
# openssl into deploy/certs/ (git-ignored, never in an image):
#   ca.crt, ca.key            a private CA (ca.key never leaves this host)
#   minio/public.crt          server certificate for MinIO, signed by the CA
#   minio/private.key         its key (P-256)
#   minio/CAs/ca.crt          the CA, for MinIO's own outbound checks
# Airflow containers trust ca.crt through the `verify` extra of the S3 connections; minio-init trusts
# it through mc's certs dir. Idempotent: existing certificates are kept unless --force.
#
#   deploy/make-certs.sh [--force] [CERTS_DIR]      default: deploy/certs beside this script
#   MINIO_TLS_EXTRA_SANS="DNS:s3.head.example,IP:10.0.0.5"   extra names (remote workers, proxies)
set -euo pipefail

force=0
if [[ ${1:-} == --force ]]; then
    force=1
    shift
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/certs}"
days_ca=1825
days_server=397

command -v openssl >/dev/null 2>&1 || { echo "make-certs.sh: openssl is required" >&2; exit 1; }

if [[ $force == 0 && -s $dir/ca.crt && -s $dir/minio/public.crt && -s $dir/minio/private.key ]]; then
    echo "make-certs.sh: certificates present in $dir (use --force to renew)"
    exit 0
fi

umask 077
mkdir -p "$dir/minio/CAs"
chmod 700 "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

sans="DNS:minio,DNS:localhost,IP:127.0.0.1"
if [[ -n ${MINIO_TLS_EXTRA_SANS:-} ]]; then
    sans="$sans,$MINIO_TLS_EXTRA_SANS"
fi

cat > "$work/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = eds-network compose CA
[v3_ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF

if [[ $force == 1 || ! -s $dir/ca.key || ! -s $dir/ca.crt ]]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days_ca" \
        -config "$work/openssl.cnf" -extensions v3_ca -out "$dir/ca.crt"
fi

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/minio/private.key"
openssl req -new -key "$dir/minio/private.key" -subj "/CN=minio" -out "$work/minio.csr"
openssl x509 -req -in "$work/minio.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days_server" \
    -extfile "$work/openssl.cnf" -extensions v3_server -out "$dir/minio/public.crt"
cp "$dir/ca.crt" "$dir/minio/CAs/ca.crt"

# Public halves readable by the containers' users; private keys stay 0600 (MinIO runs as root).
chmod 755 "$dir/minio" "$dir/minio/CAs"
chmod 644 "$dir/ca.crt" "$dir/minio/public.crt" "$dir/minio/CAs/ca.crt"
chmod 600 "$dir/ca.key" "$dir/minio/private.key"
chmod 700 "$dir"
echo "make-certs.sh: MinIO certificate for $sans in $dir (valid $days_server days)"
