#!/usr/bin/env bash
# Generate the secrets of the docker-compose stack, locally, with openssl, into deploy/secrets/
# (git-ignored, never in an image). Idempotent: an existing secret is never overwritten, so re-running
# only fills what is missing -- e.g. the level-1 key of a platform just added to config/network.yaml.
#
#   deploy/create-secrets.sh [SECRETS_DIR]        default: deploy/secrets beside this script
#   EDS_NETWORK_CONFIG=path/network.yaml          network file whose *key_connection_id are keyed
#
# One file per Docker secret (declared under `secrets:` in docker-compose.yaml and in the generated
# deploy/compose.zones.yaml: the zones' role passwords and MinIO keys), written without a
# trailing newline. The directory is 0700 (only you); the files are 0644 because compose bind-mounts them
# as they are and the containers read them as their own users (postgres, airflow, minio).
# `eds_keys` is a YAML mapping, by Airflow connection id, of the pseudonymisation keys: base64 of 32
# random bytes; for the X25519 box key, `<id>` is the private key and `<id>.public` the public key;
# `<id>.version` is the key's version (v1 when absent), stamped on everything keyed with it.
# To rotate a secret: delete its file and re-run, then `make compose-up`. To rotate a pseudonymisation
# key: replace its value AND bump its `<id>.version` (deploy/secrets.example/README.md).
# See deploy/secrets.example/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dir="${1:-$here/secrets}"
config="${EDS_NETWORK_CONFIG:-$root/config/network.yaml}"

command -v openssl >/dev/null 2>&1 || { echo "create-secrets.sh: openssl is required" >&2; exit 1; }

umask 077
mkdir -p "$dir"
chmod 700 "$dir"

hex() { openssl rand -hex "$1"; }
b64() { openssl rand "$1" | openssl base64 -A; }
fernet() { openssl rand 32 | openssl base64 -A | tr '+/' '-_'; }

created=0
put() { # put NAME VALUE: write the secret once
    local file="$dir/$1"
    if [[ -s $file ]]; then
        return
    fi
    printf '%s' "$2" > "$file"
    chmod 644 "$file"
    echo "  created $1"
    created=$((created + 1))
}

# Airflow
put airflow_db_password "$(hex 24)"
put airflow_fernet_key "$(fernet)"
put airflow_jwt_secret "$(hex 32)"
put airflow_api_secret_key "$(hex 32)"
put airflow_admin_password "$(hex 16)"
# eds-db: the superuser (provision.py creates the zones' roles with it)
put eds_db_admin_password "$(hex 24)"
# MinIO: root (administration only; the zones' users are declared in compose.zones.yaml, below)
put minio_root_user "eds-root-$(hex 4)"
put minio_root_password "$(hex 24)"

# The zones' own secrets: every secret deploy/compose.zones.yaml declares (rendered from the network file by
# deploy/render-zones.py: one per zone), by the kind its name says.
zones_file="${EDS_ZONES_COMPOSE:-$here/compose.zones.yaml}"
[[ -r $zones_file ]] || { echo "create-secrets.sh: $zones_file is missing (make compose-zones)" >&2; exit 1; }
while read -r name; do
    case "$name" in
        pg_password_*) put "$name" "$(hex 24)" ;;
        s3_access_key_*) put "$name" "$(hex 10)" ;;  # 20 characters: MinIO's access key length
        s3_secret_key_*) put "$name" "$(hex 24)" ;;
        *) echo "create-secrets.sh: no generator for secret $name of $zones_file" >&2; exit 1 ;;
    esac
done < <(sed -nE 's#^[[:space:]]+file:[[:space:]]*\./deploy/secrets/([A-Za-z0-9_.-]+)[[:space:]]*$#\1#p' "$zones_file")

# Pseudonymisation keys, one per *key_connection_id of the network file (defaults of
# eds_network.core.config when the file does not name them).
keys="$dir/eds_keys"
if [[ ! -e $keys ]]; then
    printf '# eds-network pseudonymisation keys by Airflow connection id (deploy/create-secrets.sh).\n' > "$keys"
    printf '# base64 of 32 random bytes; <id>.public is the public half of an X25519 box key pair.\n' >> "$keys"
fi
chmod 644 "$keys"

declare -A key_ids=()
if [[ -r $config ]]; then
    while read -r field id; do
        key_ids[$id]=$field
    done < <(sed -nE "s/^[[:space:]-]*([a-z_]*key_connection_id):[[:space:]]*[\"']?([A-Za-z0-9_.-]+).*/\1 \2/p" "$config")
    grep -qE '^[[:space:]-]*transport_key_connection_id:' "$config" || key_ids[eds_key_transport]=transport_key_connection_id
else
    echo "create-secrets.sh: no network file at $config; only the default national and transport keys" >&2
    key_ids[eds_key_transport]=transport_key_connection_id
fi
# the hospitals' date-shift key (used once a base sets pseudonymisation.date_shift_days), at its default id
grep -qE '^[[:space:]-]*date_shift_key_connection_id:' "$config" 2>/dev/null || key_ids[eds_key_date_shift]=date_shift_key_connection_id
# the national section's defaults
national_keys=$(sed -n '/^national:/,/^[^[:space:]#]/p' "$config" 2>/dev/null || true)
grep -qE '^[[:space:]]+key_connection_id:' <<< "$national_keys" || key_ids[eds_key_national]=key_connection_id
grep -qE '^[[:space:]]+box_key_connection_id:' <<< "$national_keys" || key_ids[eds_key_national_box]=box_key_connection_id

has_key() { grep -qE "^\"?${1//./\\.}\"?:" "$keys"; }
add_key() {
    printf '"%s": "%s"\n' "$1" "$2" >> "$keys"
    echo "  created key $1"
    created=$((created + 1))
}

for id in $(printf '%s\n' "${!key_ids[@]}" | sort); do
    if [[ ${key_ids[$id]} == box_key_connection_id ]]; then
        if has_key "$id"; then
            continue
        fi
        pem="$(openssl genpkey -algorithm X25519)"
        # raw 32-byte keys are the last 32 bytes of the PKCS#8 / SubjectPublicKeyInfo DER encodings
        add_key "$id" "$(printf '%s\n' "$pem" | openssl pkey -outform DER | tail -c 32 | openssl base64 -A)"
        add_key "$id.public" "$(printf '%s\n' "$pem" | openssl pkey -pubout -outform DER | tail -c 32 | openssl base64 -A)"
    elif ! has_key "$id"; then
        add_key "$id" "$(b64 32)"
    fi
done

# The Ed25519 signing key of each publishing zone (hospitals, platforms, the HDH: `x-eds-signing-keys` of
# compose.zones.yaml): `<id>` = the 32-byte seed, `<id>.public` = the public key, base64 (airflow-init puts the
# seed in that zone's file only and every public key in the trust store).
while read -r id; do
    has_key "$id" && continue
    pem="$(openssl genpkey -algorithm ed25519)"
    add_key "$id" "$(printf '%s\n' "$pem" | openssl pkey -outform DER | tail -c 32 | openssl base64 -A)"
    add_key "$id.public" "$(printf '%s\n' "$pem" | openssl pkey -pubout -outform DER | tail -c 32 | openssl base64 -A)"
done < <(sed -n '/^x-eds-signing-keys:/,/^[^ -]/s/^-[[:space:]]*\([A-Za-z0-9_.-]*\)[[:space:]]*$/\1/p' "$zones_file")

echo "create-secrets.sh: $created new secret(s) in $dir"
