# eds-network production image: the official Airflow image + the pinned runtime lock + this project.
# Used by every Airflow service of docker-compose.yaml (and, unchanged, by a zone's Edge worker on its own host or the
# official Helm chart). The Airflow version below, the image tag in docker-compose.yaml and the
# `apache-airflow==` pin of requirements.txt must agree: tests/unit/test_compose.py checks it.
#
#   docker build -t eds-network/airflow:3.3.2 .
#
# Layout inside the image mirrors the repository under AIRFLOW_HOME=/opt/airflow, so the package's
# repo-relative paths (config/network.yaml, expectations/) resolve without extra configuration:
#   /opt/airflow/{dags,plugins,config,expectations,include,pyproject.toml}
#   /opt/eds/bin/eds-secret      reads Docker secrets for AIRFLOW__*_CMD options
#   /opt/eds/deploy/             airflow-init script, connection template, provisioning
FROM apache/airflow:3.3.2-python3.11

LABEL org.opencontainers.image.title="eds-network-airflow" \
      org.opencontainers.image.description="Airflow for the EDS network: local EDS -> mutualised platform -> HDH landing zone" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV EDS_NETWORK_CONFIG=/opt/airflow/config/network.yaml \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Everything is installed as the unprivileged `airflow` user of the base image (never as root), into
# its user site, as the official image expects.
USER airflow
WORKDIR /opt/airflow

# 1. Dependencies, in their own layer (rebuilt only when the lock changes). Airflow is pinned to the
#    base image's own version (AIRFLOW_VERSION is set by the base image): if requirements.txt asks for
#    another one the resolver fails here instead of silently replacing Airflow.
COPY --chown=airflow:0 requirements.txt /opt/eds/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/eds/requirements.txt

# 2. The project package, constrained by the same lock. Editable, so that `eds_network` finds
#    /opt/airflow/config and /opt/airflow/expectations exactly as it does in a checkout.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install --no-cache-dir --constraint /opt/eds/requirements.txt -e /opt/airflow

# 3. DAGs, plugins, network configuration, expectation suites and the deployment helpers.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 config/ /opt/airflow/config/
COPY --chown=airflow:0 expectations/ /opt/airflow/expectations/
COPY --chown=airflow:0 deploy/airflow/ /opt/eds/deploy/
COPY --chown=airflow:0 --chmod=0755 deploy/bin/ /opt/eds/bin/

# 4. Fail the build, not the deployment: the Airflow version matches the lock, the providers the
#    compose stack relies on are importable, and the network configuration baked in is valid.
RUN python -c "import sys, airflow; lock = {l.split('==')[0]: l.split('==')[1].strip() for l in open('/opt/eds/requirements.txt') if '==' in l}; sys.exit(0 if lock['apache-airflow'] == airflow.__version__ else 'requirements.txt pins apache-airflow ' + lock['apache-airflow'] + ' but the image runs ' + airflow.__version__)" \
 && python -c "import airflow.providers.edge3, airflow.providers.fab, airflow.providers.amazon, airflow.providers.postgres" \
 && python -c "from eds_network.core.config import load_network; n = load_network(); print('network', n.name, [p.id for p in n.platforms])"
