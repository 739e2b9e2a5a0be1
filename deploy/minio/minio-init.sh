#!/bin/sh
# Bucket and access bootstrap of the compose MinIO, which stands for both the platforms' object storage
# (intake buckets, outboxes) and the Health Data Hub landing zone. Run by the `minio-init` service
# (minio/mc image, POSIX sh) with the root credentials; idempotent.
#   - two service users, one per Airflow connection, each confined to its buckets by a policy:
#       eds_s3           access key in secret minio_eds_s3_access_key  buckets ${EDS_PLATFORM_BUCKETS:-eds-*}
#       eds_hdh_landing  access key in secret minio_hdh_access_key     buckets ${EDS_HDH_BUCKETS:-hdh-*}
#   - every `bucket:` of config/network.yaml, plus the remote-logging bucket.
# airflow-init then checks (and creates if missing) each bucket through the connection that owns it.
# EDS_SECRETS_DIR, EDS_CA_FILE and EDS_MC_DIR override the container paths (tests/unit/test_compose.py).
set -euf  # -f: no globbing (bucket patterns contain *)

secrets_dir="${EDS_SECRETS_DIR:-/run/secrets}"
secret() { cat "$secrets_dir/$1"; }
endpoint="${EDS_S3_ENDPOINT:-https://minio:9000}"
config="${EDS_NETWORK_CONFIG:-/opt/eds/network.yaml}"
platform_buckets="${EDS_PLATFORM_BUCKETS:-eds-*}"
hdh_buckets="${EDS_HDH_BUCKETS:-hdh-*}"

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

policy() { # policy NAME BUCKET_PATTERN
    cat > "$mc_dir/$1.json" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"],
     "Resource": ["arn:aws:s3:::$2", "arn:aws:s3:::$2/*"]}
  ]
}
EOF
    mc admin policy create eds "$1" "$mc_dir/$1.json" >/dev/null
}

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

policy eds-platforms "$platform_buckets"
policy eds-hdh-landing "$hdh_buckets"
user minio_eds_s3_access_key minio_eds_s3_secret_key eds-platforms
user minio_hdh_access_key minio_hdh_secret_key eds-hdh-landing

# Buckets: every `bucket: NAME` of the network file (block or flow style), then the log bucket.
buckets=""
if [ -r "$config" ]; then
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
