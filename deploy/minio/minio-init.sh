#!/bin/sh
# Bucket and access bootstrap of the compose MinIO, which stands for both the platforms' object storage
# (intake buckets, outboxes) and the Health Data Hub landing zone. Run by the `minio-init` service
# (minio/mc image, POSIX sh) with the root credentials; idempotent.
#   - one user per trust zone, confined by its own policy: for every policy file <role>.json mounted in
#     ${EDS_POLICY_DIR:-/opt/eds/policies} (deploy/minio/policies, generated from eds_network/orchestration/grants.py,
#     the policies the embedded S3 endpoint enforces, with `s3:prefix` conditions), the policy <role> and the user
#     whose keys are the Docker secrets s3_access_key_<role> / s3_secret_key_<role> (deploy/compose.zones.yaml);
#   - every bucket of ${EDS_BUCKETS} (rendered from the network file into compose.zones.yaml; without it, every
#     `bucket:` of config/network.yaml), plus the remote-logging bucket.
# EDS_SECRETS_DIR, EDS_CA_FILE, EDS_MC_DIR and EDS_POLICY_DIR override the container paths (tests/unit/test_compose.py).
set -euf  # -f: no globbing (bucket patterns contain *)

secrets_dir="${EDS_SECRETS_DIR:-/run/secrets}"
secret() { cat "$secrets_dir/$1"; }
endpoint="${EDS_S3_ENDPOINT:-https://minio:9000}"
config="${EDS_NETWORK_CONFIG:-/opt/eds/network.yaml}"
policy_dir="${EDS_POLICY_DIR:-/opt/eds/policies}"

# mc trusts the compose CA through its config dir (no --insecure).
mc_dir="${EDS_MC_DIR:-/tmp/mc}"
mkdir -p "$mc_dir/certs/CAs"
cp "${EDS_CA_FILE:-/opt/eds/ca.crt}" "$mc_dir/certs/CAs/eds-ca.crt"
mc() { command mc --config-dir "$mc_dir" --quiet "$@"; }

tries=0
until mc alias set eds "$endpoint" "$(secret minio_root_user)" "$(secret minio_root_password)" >/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || { echo "minio-init: $endpoint unreachable" >&2; exit 1; }
    sleep 2
done

user() { # user ACCESS_SECRET SECRET_SECRET POLICY
    access="$(secret "$1")"
    mc admin user add eds "$access" "$(secret "$2")" >/dev/null
    # attaching an already attached policy is an error for mc: tolerate exactly that case
    if ! out="$(mc admin policy attach eds "$3" --user "$access" 2>&1)"; then
        case "$out" in
            *"already"*) ;;
            *) echo "$out" >&2; exit 1 ;;
        esac
    fi
    echo "user for policy $3 ready"
}

users=0
for file in $(ls "$policy_dir" 2>/dev/null); do
    case "$file" in
        *.json) ;;
        *) continue ;;
    esac
    role="${file%.json}"
    mc admin policy create eds "$role" "$policy_dir/$file" >/dev/null
    user "s3_access_key_$role" "s3_secret_key_$role" "$role"
    users=$((users + 1))
done
[ "$users" -gt 0 ] || { echo "minio-init: no policy file in $policy_dir" >&2; exit 1; }

# Buckets: every `bucket: NAME` of the network file (block or flow style), then the log bucket.
buckets="${EDS_BUCKETS:-}"
if [ -n "$buckets" ]; then
    :
elif [ -r "$config" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%%#*}"
        while :; do
            case "$line" in
                *bucket:*) ;;
                *) break ;;
            esac
            line="${line#*bucket:}"
            name="${line%%[,\}]*}"
            # shellcheck disable=SC2086
            set -- $name
            name="${1:-}"
            name="${name#[\"\']}"
            name="${name%[\"\']}"
            case "$name" in
                "" | *[!a-z0-9.-]*) ;;
                *) buckets="$buckets $name" ;;
            esac
        done
    done < "$config"
else
    echo "minio-init: no network file at $config, creating only the log bucket" >&2
fi
buckets="$buckets ${EDS_LOG_BUCKET:-eds-airflow-logs}"

for bucket in $buckets; do
    mc mb --ignore-existing "eds/$bucket" >/dev/null
    echo "bucket $bucket ready"
done
echo "minio-init done"
