#!/usr/bin/env bash
# One-shot initialisation of the compose stack, run by the `airflow-init` service on every
# `docker compose up` (each step is idempotent). The image's entrypoint has already waited for the
# metadata DB (`airflow db check`) before handing over to this script.
#   1. migrate the metadata DB (Airflow + FAB auth manager tables)
#   2. create the admin user of the FAB auth manager (password: Docker secret airflow_admin_password)
#   3. provision from config/network.yaml: demo databases, Airflow connections, buckets
set -euo pipefail

secret=/opt/eds/bin/eds-secret

echo "== airflow $(airflow version) -- migrating the metadata DB"
airflow db migrate

admin="${EDS_ADMIN_USERNAME:-admin}"
echo "== admin user ${admin}"
# `users create` is a no-op (exit 0) when the user exists; rotate the password with
# `docker compose exec airflow-apiserver airflow users reset-password --username ${admin}`.
airflow users create \
    --role Admin \
    --username "${admin}" \
    --firstname "${EDS_ADMIN_FIRSTNAME:-EDS}" \
    --lastname "${EDS_ADMIN_LASTNAME:-Administrator}" \
    --email "${EDS_ADMIN_EMAIL:-admin@eds-network.invalid}" \
    --password "$("${secret}" airflow_admin_password)"

echo "== provisioning from ${EDS_NETWORK_CONFIG}"
python /opt/eds/deploy/provision.py

echo "== airflow-init done"
