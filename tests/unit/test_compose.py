"""The production deployment shape: docker-compose.yaml, Dockerfile and deploy/, checked without Docker.

No Docker engine is needed: the compose file is read with PyYAML (anchors and `<<` merges resolved), the
helper scripts are run against temporary directories (openssl, sh) and the connection template is
rendered against the real config/network.yaml.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
ZONES_COMPOSE = ROOT / "deploy" / "compose.zones.yaml"
HEAD_OVERRIDE = ROOT / "deploy" / "compose.head.yaml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"
NETWORK = ROOT / "config" / "network.yaml"
DEPLOY = ROOT / "deploy"

REQUIRED_SERVICES = {
    "airflow-db",
    "eds-db",
    "minio",
    "minio-init",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
LONG_RUNNING = REQUIRED_SERVICES - {"minio-init", "airflow-init"}
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
CENTRAL_SERVICES = AIRFLOW_SERVICES - {"airflow-init"}
EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
SENSITIVE_NAME = re.compile(r"PASSW(OR)?D|SECRET|TOKEN|(^|_)KEY($|_)|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@", re.IGNORECASE)


# -- helpers ---------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def merge_compose(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f override`, as far as these tests look: services merged key by key (the lists of
    secrets and configs joined), new services and top-level secrets, configs and volumes added."""
    out = {**base, "services": {k: dict(v) for k, v in base["services"].items()}}
    for name, service in (override.get("services") or {}).items():
        merged = out["services"].setdefault(name, {})
        for key, value in service.items():
            if key in ("secrets", "configs", "volumes") and key in merged:
                merged[key] = [*merged[key], *(v for v in value if v not in merged[key])]
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    for section in ("secrets", "configs", "volumes"):
        if override.get(section):
            out[section] = {**(base.get(section) or {}), **override[section]}
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The stack `make compose-up` starts: docker-compose.yaml merged with the rendered deploy/compose.zones.yaml."""
    return merge_compose(load_compose(), load_compose(ZONES_COMPOSE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def with_default(value: str) -> str:
    """Interpolate like compose with an empty environment: `${VAR:-default}` -> default."""
    return VAR_REF.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def airflow_version_pin() -> str:
    match = re.search(r"^apache-airflow==([0-9][^\s;#]*)", REQUIREMENTS.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "requirements.txt has no apache-airflow== pin"
    return match.group(1)


def dockerfile_from() -> str:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(froms) == 1, f"expected one FROM line, got {froms}"
    return froms[0]


def secret_names_of_cmd(value: str) -> list[str]:
    """Docker secrets an Airflow `*_CMD` value reads (`eds-secret NAME ...` or `/run/secrets/NAME`)."""
    names = re.findall(r"eds-secret\s+([A-Za-z0-9_.-]+)", value)
    return names + re.findall(r"/run/secrets/([A-Za-z0-9_.-]+)", value)


def find_secret_literals(doc: dict[str, Any]) -> list[str]:
    """Where a compose document writes a secret value instead of referring to one.

    Environment keys naming a secret (PASSWORD, SECRET, KEY, TOKEN...) must be `*_FILE` pointing at
    /run/secrets, `*_CMD` reading a Docker secret, or a bare `${VAR}` (no literal default); no string may
    carry `user:password@` in a URL (the `{}` placeholder of eds-secret and `${VAR}` are fine); secrets
    come from files, not inline values.
    """
    problems: list[str] = []
    for name, service in (doc.get("services") or {}).items():
        for key, value in environment(service).items():
            if not SENSITIVE_NAME.search(key) or re.search(r"SECRETS__?BACKEND", key):  # its class and file path
                continue
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                continue
            if key.endswith("_CMD") and secret_names_of_cmd(value):
                continue
            if re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}", value):
                continue
            problems.append(f"services.{name}.environment.{key}={value!r}")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str):
            for password in URL_USERINFO.findall(node):
                if password not in ("{}",) and not password.startswith("${"):
                    problems.append(f"{path}: credentials in URL {node!r}")
            if re.search(r"--password[ =](?![\"']?\$)", node):
                problems.append(f"{path}: literal --password in {node!r}")

    walk(doc, "")
    for name, secret in (doc.get("secrets") or {}).items():
        if "file" not in secret:
            problems.append(f"secrets.{name}: not read from a file ({sorted(secret)})")
    return problems


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, **kwargs)


needs_openssl = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("bash")), reason="needs bash and openssl"
)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("openssl") and shutil.which("bash")):
        pytest.skip("needs bash and openssl")
    out = tmp_path_factory.mktemp("compose") / "secrets"
    run(["bash", str(DEPLOY / "create-secrets.sh"), str(out)], env={**os.environ, "EDS_NETWORK_CONFIG": str(NETWORK)})
    return out


@pytest.fixture(scope="module")
def network() -> Any:
    if not NETWORK.exists():
        pytest.skip("config/network.yaml does not exist yet")
    config = pytest.importorskip("eds_network.core.config")
    return config.load_network(NETWORK)


@pytest.fixture(scope="module")
def provision() -> Any:
    spec = importlib.util.spec_from_file_location("eds_provision", DEPLOY / "airflow" / "provision.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- the compose file ------------------------------------------------------------------------------


def test_compose_file_parses_with_services_secrets_and_named_volumes(compose: dict[str, Any]) -> None:
    assert isinstance(compose, dict)
    assert isinstance(compose.get("services"), dict) and compose["services"]
    assert isinstance(compose.get("secrets"), dict) and compose["secrets"]
    assert isinstance(compose.get("volumes"), dict) and compose["volumes"]
    assert "x-airflow-common" in compose, "the official x-airflow-common anchor shape is kept"


def test_required_services_are_present(services: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    assert LONG_RUNNING <= {name for name, s in services.items() if not is_one_shot(s)}
    for name, service in services.items():
        if is_one_shot(service):
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)


def test_every_long_running_service_restarts_always(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert services[name].get("restart") == "always", f"{name} restart={services[name].get('restart')!r}"


def test_only_init_jobs_and_profiled_tools_run_once(services: dict[str, Any]) -> None:
    awaited = {
        dep
        for s in services.values()
        for dep, cond in (s.get("depends_on") or {}).items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }
    for name, service in services.items():
        if is_one_shot(service):
            assert name in awaited or service.get("profiles"), (
                f"{name} runs once but nothing waits for it: a long-running service without restart policy?"
            )
    assert {"minio-init", "airflow-init"} <= awaited


def test_every_image_is_pinned_or_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
            assert (ROOT / service["build"].get("context", ".") / "Dockerfile").is_file(), name
        image = with_default(service.get("image", ""))
        assert image, f"{name} has neither image nor build"
        reference = image.split("@", 1)[0]
        assert ":" in reference.rsplit("/", 1)[-1], f"{name}: image {image!r} has no tag"
        tag = reference.rsplit(":", 1)[1]
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        if "build" not in service:
            assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_dockerfile_builds_on_the_official_airflow_image_for_python_3_11() -> None:
    assert dockerfile_from() == f"apache/airflow:{airflow_version_pin()}-python3.11"


def test_airflow_version_agrees_between_requirements_dockerfile_and_compose(compose: dict[str, Any]) -> None:
    pin = airflow_version_pin()
    from_tag = dockerfile_from().split(":", 1)[1]
    assert from_tag.split("-python")[0] == pin
    image = with_default(compose["x-airflow-common"]["image"])
    assert image.rsplit(":", 1)[1] == pin, f"compose image {image!r} is not tagged with Airflow {pin}"
    for name in AIRFLOW_SERVICES | set(edge_workers(compose["services"])):
        assert with_default(compose["services"][name]["image"]) == image, f"{name} does not run the project image"


def edge_workers(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if n.startswith("airflow-edge-")}


def mounted_secrets(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def mounted_volumes(service: dict[str, Any]) -> set[str]:
    return {(v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")) for v in service.get("volumes") or []}


def test_executor_is_the_edge_executor_for_every_airflow_service(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES | set(edge_workers(services)):
        env = environment(services[name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == EDGE_EXECUTOR, name
        assert not any(k.startswith("AIRFLOW__CELERY__") for k in env), name
        assert with_default(env["AIRFLOW__EDGE__API_URL"]) == "http://airflow-apiserver:8080/edge_worker/v1/rpcapi"
    for name in CENTRAL_SERVICES:
        assert environment(services[name])["AIRFLOW__EDGE__API_ENABLED"] == "true", name
    assert "redis" not in services and "airflow-worker" not in services, "no Celery broker nor Celery worker left"


def test_every_zone_has_exactly_one_edge_worker_serving_exactly_its_queue(
    services: dict[str, Any], network: Any
) -> None:
    from eds_network.core import zones
    from eds_network.orchestration.zone_connections import all_zones

    wanted = {zones.queue(z): z for z in [*all_zones(network), zones.OPERATOR]}
    served: dict[str, list[str]] = {}
    for name, worker in edge_workers(services).items():
        command = worker["command"]
        assert command[:5] == ["python", "-m", "eds_network.orchestration.worker", "edge", "worker"], (name, command)
        queues = command[command.index("--queues") + 1].split(",")
        assert len(queues) == 1, f"{name} serves several queues: {queues}"
        served.setdefault(queues[0], []).append(name)
        assert environment(worker)["EDS_ZONE"] == wanted.get(queues[0]), name
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD" not in environment(worker), f"{name} reaches the metadata DB"
        assert "container_name" not in worker and not worker.get("ports"), name
    assert served == {q: [f"airflow-edge-{q}"] for q in wanted}, served


def test_each_worker_mounts_its_own_zone_secrets_only_and_no_central_service_any(
    services: dict[str, Any], network: Any, render_zones: Any
) -> None:
    from eds_network.core import zones

    per_zone = render_zones.zone_secrets(network)
    zone_secret = {name: zone for zone, names in per_zone.items() for name in names}
    zone_volume = {f"zone-{zones.queue(z)}": z for z in render_zones.cluster_zones(network)}
    for name, worker in edge_workers(services).items():
        zone = environment(worker)["EDS_ZONE"]
        assert mounted_secrets(worker) == {"airflow_jwt_secret"}, f"{name}: {mounted_secrets(worker)}"
        vocabulary = (
            mounted_volumes({"volumes": [render_zones.VOCABULARY_MOUNT]}) if zones.kind(zone) == "platform" else set()
        )
        assert mounted_volumes(worker) == {f"zone-{zones.queue(zone)}", *vocabulary}, name
        own = json.loads(environment(worker)["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])["connections_file_path"]
        assert environment(worker)["AIRFLOW__WORKERS__SECRETS_BACKEND"].endswith("LocalFilesystemBackend")
        mount = next(v for v in worker["volumes"] if v.startswith(f"zone-{zones.queue(zone)}:"))
        assert own.startswith(mount.split(":")[1] + "/") and mount.endswith(":ro"), (name, own, mount)
    provisioning = {"airflow-init", "minio-init", "zone-volumes"}
    for name, service in services.items():
        if name in provisioning or name in edge_workers(services):
            continue
        assert not mounted_secrets(service) & set(zone_secret), f"{name} mounts a zone's secret"
        assert not mounted_volumes(service) & set(zone_volume), f"{name} mounts a zone's connections volume"
    assert set(zone_secret) <= mounted_secrets(services["airflow-init"]), "airflow-init sets every zone's logins"
    s3 = {n for n in zone_secret if n.startswith("s3_")}
    assert s3 and mounted_secrets(services["minio-init"]) & set(zone_secret) == s3, "minio-init: the S3 keys only"


def test_metadata_database_is_postgresql(services: dict[str, Any]) -> None:
    env = environment(services["airflow-scheduler"])
    conn = with_default(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", ""))
    url = conn.split()[-1]
    assert url.startswith("postgresql"), conn
    host = re.search(r"@([^:/]+)", url).group(1)
    assert host in services and services[host]["image"].startswith("postgres:"), host


def test_execution_api_server_url_points_at_the_api_server_service(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES | set(edge_workers(services)):
        url = with_default(environment(services[name])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/execution/", url)
        assert match, f"{name}: {url!r}"
        assert match.group(1) == "airflow-apiserver" and match.group(2) == "8080"
    assert services["airflow-apiserver"]["command"] == "api-server"


def test_no_service_pins_a_container_name(services: dict[str, Any]) -> None:
    assert [n for n, s in services.items() if "container_name" in s] == []


def test_no_secret_literal_in_the_compose_files() -> None:
    for path in (COMPOSE, HEAD_OVERRIDE, ZONES_COMPOSE):
        assert find_secret_literals(load_compose(path)) == [], path.name


def test_secret_literal_detector_flags_inline_secrets() -> None:
    bad = {
        "services": {
            "db": {"environment": {"POSTGRES_PASSWORD": "hunter2", "POSTGRES_PASSWORD_FILE": "/run/secrets/x"}},
            "app": {
                "environment": [
                    "AIRFLOW__CORE__FERNET_KEY=abc",
                    "API_TOKEN=${TOKEN:-defaulttoken}",
                    "AIRFLOW__CORE__FERNET_KEY_CMD=echo abc",
                ],
                "command": "run --password s3cret",
            },
            "x": {"environment": {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://u:pw@db/x"}},
        },
        "secrets": {"inline": {"environment": "SOME_VAR"}},
    }
    found = "\n".join(find_secret_literals(bad))
    for needle in ("POSTGRES_PASSWORD=", "FERNET_KEY=", "API_TOKEN", "FERNET_KEY_CMD", "--password", "u:pw@", "inline"):
        assert needle in found, f"{needle!r} not flagged in:\n{found}"
    assert "POSTGRES_PASSWORD_FILE" not in found


def test_airflow_secret_options_read_secrets_mounted_in_the_same_service(services: dict[str, Any]) -> None:
    for name, service in services.items():
        mounted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}
        for key, value in environment(service).items():
            if key.endswith("_CMD"):
                wanted = secret_names_of_cmd(value)
                assert wanted, f"{name}.{key} reads no Docker secret: {value!r}"
                assert set(wanted) <= mounted, f"{name}.{key} reads {wanted} but mounts {sorted(mounted)}"
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}.{key}"
    sensitive = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
    }
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        assert {k + "_CMD" for k in sensitive} <= set(env), f"{name} lacks a secret option"


def test_services_reference_only_declared_services_secrets_configs_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown {dep}"
        for s in service.get("secrets") or []:
            assert (s if isinstance(s, str) else s["source"]) in compose["secrets"], (name, s)
        for c in service.get("configs") or []:
            assert (c if isinstance(c, str) else c["source"]) in compose.get("configs", {}), (name, c)
        for v in service.get("volumes") or []:
            source = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if source and not source.startswith((".", "/", "$")):
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    for name, config in (compose.get("configs") or {}).items():
        path = ROOT / config["file"]
        if "deploy/certs" not in config["file"]:
            assert path.is_file(), f"config {name}: {config['file']} missing"


def test_state_lives_in_named_volumes(services: dict[str, Any]) -> None:
    expected = {
        "airflow-db": "/var/lib/postgresql/data",
        "eds-db": "/var/lib/postgresql/data",
        "minio": "/data",
    }
    for name, target in expected.items():
        mounts = [v for v in services[name].get("volumes", []) if isinstance(v, str)]
        named = [v for v in mounts if v.endswith(":" + target) and not v.startswith((".", "/"))]
        assert named, f"{name} keeps {target} outside a named volume: {mounts}"


def test_every_secret_is_a_file_under_the_git_ignored_deploy_secrets(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        assert secret["file"] == f"./deploy/secrets/{name}", (name, secret)


def test_minio_serves_tls_with_certificates_from_deploy_certs(services: dict[str, Any]) -> None:
    minio = services["minio"]
    assert "--certs-dir" in minio["command"]
    certs_dir = minio["command"][minio["command"].index("--certs-dir") + 1]
    binds = [v for v in minio["volumes"] if isinstance(v, dict) and v.get("target") == certs_dir]
    assert binds and binds[0]["source"] == "./deploy/certs/minio" and binds[0]["read_only"], binds
    assert binds[0]["bind"]["create_host_path"] is False, "a missing cert dir must fail, not start MinIO in clear"
    assert any(v.startswith("https://") for v in environment(minio).values())


def test_head_override_publishes_infrastructure_but_never_workers() -> None:
    override = load_compose(HEAD_OVERRIDE)["services"]
    assert not [n for n in override if n.startswith("airflow-edge-")]
    assert set(override) <= set(load_compose()["services"])
    # what a remote zone's worker reaches: its data stores; never the metadata DB (an Edge worker calls the API)
    assert set(override) == {"eds-db", "minio"}, set(override)
    assert "celery" not in HEAD_OVERRIDE.read_text().lower() and "redis" not in HEAD_OVERRIDE.read_text().lower()
    for name, service in override.items():
        for port in service["ports"]:
            assert port.startswith("${EDS_PRIVATE_ADDR:?"), f"{name} publishes {port!r} beyond the private address"


def test_env_example_documents_every_compose_variable_and_holds_no_secret() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = dict(line.split("=", 1) for line in example.splitlines() if line.strip() and not line.startswith("#"))
    files = (COMPOSE, ZONES_COMPOSE, HEAD_OVERRIDE)
    used = {m.group(1) for path in files for m in VAR_REF.finditer(path.read_text())}
    assert used - set(documented) == set(), "variables used but not in .env.example"
    assert [k for k in documented if SENSITIVE_NAME.search(k)] == []
    # plain `docker compose` commands (docs) see the zones' services: the files make compose-up merges
    assert documented["COMPOSE_FILE"].split(":") == ["docker-compose.yaml", "deploy/compose.zones.yaml"]
    assert all((ROOT / f).is_file() for f in documented["COMPOSE_FILE"].split(":"))


# -- Dockerfile and build context -----------------------------------------------------------------


def test_dockerfile_installs_pinned_requirements_and_the_project_as_the_airflow_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    user_lines = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    pip_lines = [i for i, line in enumerate(lines) if line.startswith("RUN") and "pip install" in line]
    assert pip_lines and user_lines and user_lines[0] < pip_lines[0]
    assert lines[user_lines[-1]] == "USER airflow", "the image must not end running as root"
    assert all(lines[max(u for u in user_lines if u < p)] == "USER airflow" for p in pip_lines)
    first, project = lines[pip_lines[0]], lines[pip_lines[-1]]
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in first and "-r /opt/eds/requirements.txt" in first
    assert "--constraint /opt/eds/requirements.txt" in project and "/opt/airflow" in project
    for source, target in {
        "requirements.txt": "/opt/eds/requirements.txt",
        "pyproject.toml": "/opt/airflow/pyproject.toml",
        "include/": "/opt/airflow/include/",
        "dags/": "/opt/airflow/dags/",
        "plugins/": "/opt/airflow/plugins/",
        "config/": "/opt/airflow/config/",
        "expectations/": "/opt/airflow/expectations/",
        "deploy/airflow/": "/opt/eds/deploy/",
        "deploy/bin/": "/opt/eds/bin/",
    }.items():
        assert re.search(rf"^COPY .*\s{re.escape(source)}\s+{re.escape(target)}$", text, re.MULTILINE), source


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "deploy/secrets", "deploy/certs"} <= patterns
    needed = {"dags", "plugins", "config", "expectations", "include", "deploy", "deploy/airflow", "deploy/bin"}
    assert needed.isdisjoint(patterns), "the image needs these paths"
    assert "requirements.txt" not in patterns and "pyproject.toml" not in patterns


def test_generated_secrets_and_certificates_are_git_ignored() -> None:
    if not shutil.which("git") or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    for path in ("deploy/secrets/airflow_fernet_key", "deploy/secrets/eds_keys", "deploy/certs/ca.key"):
        assert ignored(path), f"{path} would be committed"
    assert not ignored("deploy/secrets.example/README.md")
    assert not ignored("deploy/create-secrets.sh")


# -- helper scripts --------------------------------------------------------------------------------


def test_create_secrets_writes_every_declared_secret_once(compose: dict[str, Any], secrets_dir: Path) -> None:
    files = {p.name for p in secrets_dir.iterdir()}
    assert files == set(compose["secrets"]), files ^ set(compose["secrets"])
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for path in secrets_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
        content = path.read_text()
        assert content and (path.name == "eds_keys" or "\n" not in content), path.name
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    out = run(["bash", str(DEPLOY / "create-secrets.sh"), str(secrets_dir)]).stdout
    assert "0 new secret" in out
    assert before == {p.name: p.read_bytes() for p in secrets_dir.iterdir()}, "a re-run changed a secret"


def test_create_secrets_makes_valid_fernet_and_pseudonymisation_keys(secrets_dir: Path, network: Any) -> None:
    from cryptography.fernet import Fernet

    Fernet((secrets_dir / "airflow_fernet_key").read_text())
    keys = yaml.safe_load((secrets_dir / "eds_keys").read_text())
    wanted = {p.key_connection_id for p in network.platforms} | {
        network.transport_key_connection_id,
        network.national.key_connection_id,
        network.national.box_key_connection_id,
    }
    assert wanted <= set(keys), wanted - set(keys)
    for conn_id in wanted:
        assert len(base64.b64decode(keys[conn_id], validate=True)) == 32, conn_id
    assert len({keys[k] for k in wanted}) == len(wanted), "two connections share a key"
    box = network.national.box_key_connection_id
    public = base64.b64decode(keys[f"{box}.public"])
    nacl_public = pytest.importorskip("nacl.public")
    assert bytes(nacl_public.PrivateKey(base64.b64decode(keys[box])).public_key) == public


def test_create_secrets_adds_the_key_of_a_new_platform_only(tmp_path: Path, secrets_dir: Path) -> None:
    if not NETWORK.exists():
        pytest.skip("config/network.yaml does not exist yet")
    work = tmp_path / "secrets"
    shutil.copytree(secrets_dir, work)
    config = tmp_path / "network.yaml"
    config.write_text(NETWORK.read_text() + "\n# new platform\n    key_connection_id: eds_key_l1_new_platform\n")
    before = yaml.safe_load((work / "eds_keys").read_text())
    run(["bash", str(DEPLOY / "create-secrets.sh"), str(work)], env={**os.environ, "EDS_NETWORK_CONFIG": str(config)})
    after = yaml.safe_load((work / "eds_keys").read_text())
    assert set(after) - set(before) == {"eds_key_l1_new_platform"}
    assert all(after[k] == v for k, v in before.items())


@needs_openssl
def test_make_certs_issues_a_minio_certificate_signed_by_its_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    env = {**os.environ, "MINIO_TLS_EXTRA_SANS": "DNS:eds-head.example"}
    run(["bash", str(DEPLOY / "make-certs.sh"), str(certs)], env=env)
    crt, key = certs / "minio" / "public.crt", certs / "minio" / "private.key"
    run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(crt)])
    text = run(["openssl", "x509", "-in", str(crt), "-noout", "-text"]).stdout
    san_line = text.split("X509v3 Subject Alternative Name:", 1)[1].strip().splitlines()[0]
    sans = {name.strip() for name in san_line.split(",")}
    assert {"DNS:minio", "DNS:localhost", "DNS:eds-head.example"} <= sans, sans
    assert "TLS Web Server Authentication" in text
    assert (certs / "minio" / "CAs" / "ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600
    fingerprint = crt.read_bytes()
    run(["bash", str(DEPLOY / "make-certs.sh"), str(certs)])
    assert crt.read_bytes() == fingerprint, "an existing certificate was replaced without --force"


def test_eds_secret_prints_the_secret_without_newline_and_quotes_it_into_urls(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p@ss/word\n")
    script = str(DEPLOY / "bin" / "eds-secret")
    env = {**os.environ, "EDS_SECRETS_DIR": str(tmp_path)}
    assert run([sys.executable, script, "pw"], env=env).stdout == "p@ss/word"
    url = run([sys.executable, script, "pw", "redis://:{}@redis:6379/0"], env=env).stdout
    assert url == "redis://:p%40ss%2Fword@redis:6379/0"
    missing = subprocess.run([sys.executable, script, "nope"], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stdout == ""


def test_minio_init_creates_every_bucket_and_one_user_per_zone_with_its_own_policy(
    tmp_path: Path, secrets_dir: Path, network: Any, services: dict[str, Any]
) -> None:
    if not shutil.which("sh"):
        pytest.skip("needs sh")
    from eds_network.orchestration.grants import minio_policies
    from eds_network.orchestration.zone_connections import all_zones, principal

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mc.log"
    (bin_dir / "mc").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_dir / "mc").chmod(0o755)
    ca = tmp_path / "ca.crt"
    ca.write_text("test CA\n")
    # the policy files as compose mounts them into minio-init (configs of compose.zones.yaml)
    init = services["minio-init"]
    policies = tmp_path / "policies"
    policies.mkdir()
    for config in init["configs"]:
        if config["target"].startswith("/opt/eds/policies/"):
            source = ROOT / load_compose(ZONES_COMPOSE)["configs"][config["source"]]["file"]
            shutil.copy(source, policies / Path(config["target"]).name)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "EDS_SECRETS_DIR": str(secrets_dir),
        "EDS_CA_FILE": str(ca),
        "EDS_MC_DIR": str(tmp_path / "mc"),
        "EDS_POLICY_DIR": str(policies),
        "EDS_NETWORK_CONFIG": str(NETWORK),
        "EDS_BUCKETS": environment(init)["EDS_BUCKETS"],
    }
    run(["sh", str(DEPLOY / "minio" / "minio-init.sh")], env=env)
    calls = log.read_text().splitlines()
    buckets = {loc.bucket for p in network.platforms for loc in (p.intake, p.outbox, p.key_holder.exchange)}
    buckets |= {network.national.landing_zone.bucket, "eds-airflow-logs"}
    created = {c.rsplit("eds/", 1)[1] for c in calls if " mb --ignore-existing eds/" in c}
    assert created == buckets
    files = minio_policies(network)
    zones_with_s3 = [z for z in all_zones(network) if f"{principal(z)}.json" in files]
    assert len(zones_with_s3) == len(all_zones(network)), "every zone of the network has its S3 user"
    access_keys = set()
    for zone in zones_with_s3:
        role = principal(zone)
        access = (secrets_dir / f"s3_access_key_{role}").read_text()
        secret = (secrets_dir / f"s3_secret_key_{role}").read_text()
        access_keys.add(access)
        assert any(c.endswith(f" admin policy create eds {role} {policies}/{role}.json") for c in calls), role
        assert any(c.endswith(f" admin user add eds {access} {secret}") for c in calls), role
        assert any(c.endswith(f" admin policy attach eds {role} --user {access}") for c in calls), role
        # the file compose mounts is the zone's own policy, the one the embedded S3 endpoint enforces
        assert json.loads((policies / f"{role}.json").read_text()) == files[f"{role}.json"], role
    assert len(access_keys) == len(zones_with_s3), "two zones share an S3 user"
    assert len([c for c in calls if " admin user add " in c]) == len(zones_with_s3), "a user beyond the zones'"
    assert not any("s3:*" in p.read_text() and "arn:aws:s3:::eds-*" in p.read_text() for p in policies.iterdir())
    assert (tmp_path / "mc" / "certs" / "CAs" / "eds-ca.crt").read_text() == "test CA\n"
    assert not any("--insecure" in c for c in calls), "minio-init must verify the CA, not skip TLS checks"


def test_create_secrets_makes_one_s3_key_pair_per_zone(secrets_dir: Path, network: Any) -> None:
    from eds_network.orchestration.zone_connections import all_zones, principal

    for zone in all_zones(network):
        access = (secrets_dir / f"s3_access_key_{principal(zone)}").read_text()
        secret = (secrets_dir / f"s3_secret_key_{principal(zone)}").read_text()
        assert 3 <= len(access) <= 20 and len(secret) >= 40, zone
    made = {p.name for p in secrets_dir.iterdir() if p.name.startswith("s3_")}
    assert len(made) == 2 * len(all_zones(network))


def test_zone_connection_files_hold_each_zones_own_logins_and_the_metadata_db_none(
    provision: Any, network: Any, secrets_dir: Path, tmp_path: Path
) -> None:
    """airflow-init writes each zone's file with `zone_connections` (the embedded cluster's function) and its own
    role and MinIO user; the metadata DB gets the operator's catalogue connection only."""
    from eds_network.core import zones
    from eds_network.orchestration.zone_connections import all_zones, principal, zone_connection_ids

    lookup = provision.secrets_lookup(secrets_dir, env={})
    connections, _ = provision.render_connections(
        provision.load_template(), provision.connection_roles(network), lookup
    )
    files = provision.zone_connection_files(network, connections, lookup)
    assert set(files) == {*all_zones(network), zones.OPERATOR}
    keys = yaml.safe_load((secrets_dir / "eds_keys").read_text())
    for zone in all_zones(network):
        conns, role = files[zone], principal(zone)
        assert set(conns) <= set(zone_connection_ids(network, zone)), zone
        pg_password = (secrets_dir / f"pg_password_{role}").read_text()
        s3_access = (secrets_dir / f"s3_access_key_{role}").read_text()
        for conn_id, conn in conns.items():
            if conn["conn_type"] == "postgres":
                assert (conn["login"], conn["password"]) == (role, pg_password), (zone, conn_id)
            if conn["conn_type"] == "aws":
                assert conn["login"] == s3_access, (zone, conn_id)
        text = json.dumps(conns)
        for other in all_zones(network):
            if other != zone:
                assert (secrets_dir / f"pg_password_{principal(other)}").read_text() not in text, (zone, other)
                assert (secrets_dir / f"s3_secret_key_{principal(other)}").read_text() not in text, (zone, other)
    national_box = keys[network.national.box_key_connection_id]
    assert national_box in json.dumps(files[zones.NATIONAL])
    assert not any(national_box in json.dumps(files[z]) for z in files if z != zones.NATIONAL)
    for b in network.local_bases:
        assert network.national.key_connection_id not in files[zones.local(b.id)]
    central = provision.central_connections(network, connections)
    assert set(central) == {network.catalogue_connection_id}
    assert central[network.catalogue_connection_id]["login"] == "eds_operator"
    assert not any(v in json.dumps(central) for v in keys.values() if len(str(v)) > 8)
    # each publishing zone signs with its own Ed25519 key, in its file only; every file has the trust store
    nacl_signing = pytest.importorskip("nacl.signing")
    signers = {f"local:{b.id}" for b in network.local_bases} | {f"platform:{p.id}" for p in network.platforms}
    signers |= {zones.NATIONAL}
    for zone in all_zones(network):
        sign_id = f"eds_sign_{zone.replace(':', '_')}"
        for other in all_zones(network):
            assert (sign_id in files[other]) == (other == zone and zone in signers), (sign_id, other)
        store = files[zone]["eds_trust_store"]["extra"]["public_keys"]
        assert set(store) == signers and "password" not in files[zone]["eds_trust_store"]
        if zone in signers:
            seed = base64.b64decode(files[zone][sign_id]["password"])
            public = bytes(nacl_signing.SigningKey(seed).verify_key)
            assert base64.b64encode(public).decode() == store[zone] == keys[f"{sign_id}.public"], zone
    work = tmp_path / "zones"
    for zone in files:
        (work / zones.queue(zone)).mkdir(parents=True)
    provision.write_zone_files(files, work)
    for zone in files:
        path = work / zones.queue(zone) / "connections.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text()) == files[zone]


def test_the_operators_zone_file_holds_the_catalogue_and_the_airflow_api_as_the_embedded_cluster(
    provision: Any, network: Any, secrets_dir: Path
) -> None:
    """The onboarding DAG's backfill runs on the operator's worker through `eds_airflow_api`: compose provisions it
    there (and nowhere else), as the embedded cluster's operator worker has it."""
    from eds_network.core import zones
    from eds_network.orchestration.zone_connections import CENTRAL_CONNECTION_IDS

    lookup = provision.secrets_lookup(secrets_dir, env={})
    connections, _ = provision.render_connections(
        provision.load_template(), provision.connection_roles(network), lookup
    )
    files = provision.zone_connection_files(network, connections, lookup)
    operator = files[zones.OPERATOR]
    assert set(operator) == {network.catalogue_connection_id, *CENTRAL_CONNECTION_IDS}
    api = operator["eds_airflow_api"]
    assert api["conn_type"] == "http" and api["login"] == "admin"
    assert api["password"] == (secrets_dir / "airflow_admin_password").read_text()
    assert api["extra"]["base_url"] == "http://airflow-apiserver:8080"  # a dict in the zone files
    assert not [z for z, conns in files.items() if z != zones.OPERATOR and "eds_airflow_api" in conns]
    assert "eds_airflow_api" not in provision.central_connections(network, connections)


def test_provision_writes_one_zones_file_for_a_worker_on_its_own_host(
    network: Any, secrets_dir: Path, tmp_path: Path
) -> None:
    """`provision.py --zone-files DIR --zone Z` (docs/production.md: a hospital's worker, a Kubernetes Secret) writes
    that zone's file only, 0600 in a 0700 folder, touching no database; an unknown zone is refused by name."""
    env = {**os.environ, "EDS_SECRETS_DIR": str(secrets_dir), "EDS_NETWORK_CONFIG": str(NETWORK)}
    script = str(DEPLOY / "airflow" / "provision.py")
    base = network.local_bases[0]
    out = tmp_path / "zone-files"
    done = subprocess.run(
        [sys.executable, script, "--zone-files", str(out), "--zone", f"local:{base.id}"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.iterdir()] == [f"local-{base.id}"]
    folder = out / f"local-{base.id}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "connections.json").stat().st_mode) == 0o600
    conns = json.loads((folder / "connections.json").read_text())
    assert base.source_connection_id in conns and network.national.key_connection_id not in conns
    assert conns[base.source_connection_id]["login"] == f"eds_local_{base.id}"
    bad = subprocess.run(
        [sys.executable, script, "--zone-files", str(tmp_path / "bad"), "--zone", "local:nowhere"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown zone(s) local:nowhere" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_provision_writes_the_demos_seeding_file_for_eds_seed_as_the_superuser_only(
    network: Any, secrets_dir: Path, tmp_path: Path
) -> None:
    """`provision.py --seed-connections FILE` then `eds seed --connections FILE` (docs/production.md) seeds the compose
    demo sources and catalogue as eds_admin: the file names those databases only, with no zone's login nor key."""
    from eds_network.dev.demo import seed_dsns

    env = {**os.environ, "EDS_SECRETS_DIR": str(secrets_dir), "EDS_NETWORK_CONFIG": str(NETWORK)}
    env |= {"EDS_DB_HOST": "127.0.0.1", "EDS_DB_PORT": "5433"}
    out = tmp_path / "seed.json"
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "airflow" / "provision.py"), "--seed-connections", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    conns = json.loads(out.read_text())
    admin = (secrets_dir / "eds_db_admin_password").read_text()
    assert set(conns) == {network.catalogue_connection_id, *(b.source_connection_id for b in network.local_bases)}
    assert {(c["login"], c["password"], c["host"], c["port"]) for c in conns.values()} == {
        ("eds_admin", admin, "127.0.0.1", 5433)
    }
    dsns = seed_dsns(network, str(out))
    assert dsns[network.catalogue_connection_id].endswith(f"@127.0.0.1:5433/{network.catalogue_connection_id}")
    text = out.read_text()
    assert not [
        p.name for p in secrets_dir.iterdir() if p.name.startswith(("pg_password_", "s3_")) and p.read_text() in text
    ]
    assert not any(str(v) in text for v in yaml.safe_load((secrets_dir / "eds_keys").read_text()).values())


def test_a_date_shift_key_reaches_the_hospitals_of_a_network_that_shifts_dates(
    provision: Any, secrets_dir: Path, tmp_path: Path
) -> None:
    from eds_network.core import zones
    from eds_network.core.config import load_network

    text = NETWORK.read_text()
    assert "date_shift_days: 0" in text
    shifted = tmp_path / "network.yaml"
    shifted.write_text(text.replace("date_shift_days: 0", "date_shift_days: 3", 1))
    network = load_network(shifted)
    key_id = network.date_shift_key_connection_id
    assert yaml.safe_load((secrets_dir / "eds_keys").read_text())[key_id], "create-secrets.sh makes the key"
    lookup = provision.secrets_lookup(secrets_dir, env={})
    connections, _ = provision.render_connections(
        provision.load_template(), provision.connection_roles(network), lookup
    )
    files = provision.zone_connection_files(network, connections, lookup)
    shifting = {zones.local(b.id) for b in network.local_bases if b.pseudonymisation.date_shift_days}
    assert shifting and {z for z, conns in files.items() if key_id in conns} == shifting


def test_each_platforms_worker_mounts_the_vocabulary_archive_and_no_other_worker_does(
    services: dict[str, Any], render_zones: Any
) -> None:
    from eds_network.core import zones

    for name, worker in edge_workers(services).items():
        zone = environment(worker)["EDS_ZONE"]
        env = environment(worker)
        if zones.kind(zone) == "platform":
            assert with_default(env["EDS_VOCABULARY_ZIP"]) == "/opt/eds/vocabulary/vocabulary.zip", name
            mount = with_default(render_zones.VOCABULARY_MOUNT)
            assert render_zones.VOCABULARY_MOUNT in worker["volumes"] and mount.endswith(":/opt/eds/vocabulary:ro")
            assert (ROOT / mount.split(":")[0]).is_dir(), "the default vocabulary folder is in the checkout"
        else:
            assert "EDS_VOCABULARY_ZIP" not in env and render_zones.VOCABULARY_MOUNT not in worker["volumes"], name
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/vocabulary/vocabulary.zip"], cwd=ROOT)
    assert ignored.returncode == 0, "a licensed vocabulary archive would be committed"
    assert "deploy/vocabulary/" in (ROOT / ".dockerignore").read_text().split()


def test_render_zones_check_fails_on_a_stale_file_and_passes_on_the_committed_one(tmp_path: Path) -> None:
    script = [sys.executable, str(DEPLOY / "render-zones.py"), "--config", str(NETWORK)]
    fresh = subprocess.run([*script, "--check"], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    stale = tmp_path / "compose.zones.yaml"
    stale.write_text(ZONES_COMPOSE.read_text().replace("airflow-edge-national", "airflow-edge-old"))
    drift = subprocess.run([*script, "--check", "--output", str(stale)], capture_output=True, text=True, timeout=120)
    assert drift.returncode == 1 and "not a fresh render" in drift.stderr


@pytest.fixture(scope="module")
def render_zones() -> Any:
    spec = importlib.util.spec_from_file_location("eds_render_zones", DEPLOY / "render-zones.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_zones_compose_file_is_a_fresh_render_of_the_network(render_zones: Any, network: Any) -> None:
    assert ZONES_COMPOSE.read_text() == render_zones.render_text(network), (
        "deploy/compose.zones.yaml is stale: run `make compose-zones` (deploy/render-zones.py) and commit it"
    )
    assert "-f deploy/compose.zones.yaml" in (DEPLOY / "Makefile.compose").read_text()


def test_create_secrets_makes_one_postgresql_password_per_zone(secrets_dir: Path, network: Any, provision: Any) -> None:
    from eds_network.orchestration.zone_connections import all_zones, principal

    made = {p.name for p in secrets_dir.iterdir() if p.name.startswith("pg_password_")}
    want = {f"pg_password_{principal(z)}" for z in [*all_zones(network), "operator"]}
    assert made == want, made ^ want
    assert {provision.pg_password_secret(z) for z in provision.database_zones(network)} == want
    values = [(secrets_dir / name).read_text() for name in sorted(want)]
    assert len(set(values)) == len(values) and all(len(v) >= 32 for v in values), "zones share a password"


def test_no_database_role_is_made_by_an_init_script_nor_mounted_in_eds_db(services: dict[str, Any]) -> None:
    """Roles and grants are provision.py's alone (one definition, grants.py): eds-db knows only its superuser."""
    assert not (DEPLOY / "postgres").exists()
    assert [s if isinstance(s, str) else s["source"] for s in services["eds-db"]["secrets"]] == [
        "eds_db_admin_password"
    ]
    assert "configs" not in services["eds-db"]
    init = set(services["airflow-init"]["secrets"])
    assert "eds_db_admin_password" in init and {s for s in init if s.startswith("pg_password_")}


class _Recorder:
    """A stand-in for a psycopg connection to eds-db that records the statements run on each database."""

    def __init__(self, log: dict[str, list[str]], dbname: str) -> None:
        self.log, self.dbname = log, dbname

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, stmt: str, *args: Any) -> None:
        self.log.setdefault(self.dbname, []).append(stmt)


def test_compose_provisioning_applies_the_embedded_stacks_grants(
    provision: Any, network: Any, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """airflow-init runs on eds-db the very statements `dev/access.apply_pg_roles` runs on the embedded stack (one
    function, `grants.pg_statements`): only the database names and the passwords differ."""
    from eds_network.orchestration import grants
    from eds_network.orchestration.zone_connections import all_zones

    lookup = provision.secrets_lookup(secrets_dir, env={})
    connections, created = provision.render_connections(
        provision.load_template(), provision.connection_roles(network), lookup
    )
    databases = provision.eds_db_databases(network, connections, created)
    assert databases == grants.compose_databases(network)
    ran: dict[str, list[str]] = {}
    monkeypatch.setattr(provision, "admin_connect", lambda lookup, dbname: _Recorder(ran, dbname))
    provision.apply_grants(lookup, network, databases)

    passwords = provision.zone_passwords(network, lookup)
    assert set(passwords) == {*all_zones(network), "operator"}
    embedded = grants.pg_statements(network, passwords, grants.embedded_databases(network))
    rename = {"catalogue": databases.catalogue, grants.NATIONAL_DATABASE: databases.national}
    rename |= {f"src_{b}": db for b, db in databases.sources.items()}
    rename |= {f"wh_{p}": db for p, db in databases.warehouses.items()}
    pattern = re.compile(r"\bDATABASE (" + "|".join(map(re.escape, rename)) + r")\b")

    def as_compose(stmt: str) -> str:  # a database's name, not the catalogue's schema `catalogue`
        return pattern.sub(lambda m: f"DATABASE {rename[m.group(1)]}", stmt)

    expected = {rename.get(db, db): [as_compose(s) for s in stmts] for db, stmts in embedded.items()}
    expected["postgres"] = [s for s in expected["postgres"] if s != "REVOKE ALL ON DATABASE airflow FROM PUBLIC"]
    assert ran == expected
    # every zone's role gets its own password, from its own Docker secret
    for zone, password in passwords.items():
        assert password == (secrets_dir / provision.pg_password_secret(zone)).read_text()
        assert any(password in s and "ALTER ROLE" in s for s in ran["postgres"]), zone
    # and every database connection logs in with the role of its zone
    assert connections[network.catalogue_connection_id]["login"] == "eds_operator"
    assert connections[network.national.tables_connection_id]["login"] == "eds_national"
    for p in network.platforms:
        assert connections[p.warehouse_connection_id]["login"] == f"eds_platform_{p.id}"
        for b in p.members:
            assert connections[b.source_connection_id]["login"] == f"eds_local_{b.id}"


def test_embedded_stack_applies_the_grants_module(monkeypatch: pytest.MonkeyPatch, network: Any) -> None:
    """dev/access.py keeps no copy of the grants: it runs orchestration/grants.py's statements."""
    from eds_network.dev import access
    from eds_network.orchestration import grants

    assert access.pg_statements is grants.pg_statements and access.s3_policy is grants.s3_policy
    assert access.minio_policies is grants.minio_policies


# -- connections ------------------------------------------------------------------------------------


def test_connection_template_renders_every_connection_of_the_network(
    provision: Any, network: Any, secrets_dir: Path
) -> None:
    roles = provision.connection_roles(network)
    template = provision.load_template()
    lookup = provision.secrets_lookup(secrets_dir, env={})
    connections, databases = provision.render_connections(template, roles, lookup)

    named = {network.catalogue_connection_id, network.transport_key_connection_id}
    named |= {network.national.landing_zone.connection_id, network.national.key_connection_id}
    named |= {network.national.box_key_connection_id, network.national.tables_connection_id}
    named |= {f"eds_sign_{z.replace(':', '_')}" for z in [*(f"local:{b.id}" for b in network.local_bases)]}
    named |= {f"eds_sign_platform_{p.id}" for p in network.platforms} | {"eds_sign_national", "eds_airflow_api"}
    for p in network.platforms:
        named |= {p.warehouse_connection_id, p.key_connection_id, p.intake.connection_id, p.outbox.connection_id}
        named |= {b.source_connection_id for b in p.members}
    assert set(connections) == named
    assert "${" not in json.dumps(connections), "an unresolved placeholder reached the import file"

    keys = yaml.safe_load((secrets_dir / "eds_keys").read_text())
    for p in network.platforms:
        wh = connections[p.warehouse_connection_id]
        assert wh["conn_type"] == "postgres" and wh["schema"] == p.warehouse_connection_id and wh["port"] == 5432
        assert wh["password"] == (secrets_dir / f"pg_password_eds_platform_{p.id}").read_text()
        assert connections[p.key_connection_id]["password"] == keys[p.key_connection_id]
        for b in p.members:
            assert connections[b.source_connection_id]["schema"] == b.source_connection_id
            assert b.id in connections[b.source_connection_id]["description"]
    key_ids = {p.key_connection_id for p in network.platforms} | {
        network.transport_key_connection_id,
        network.national.key_connection_id,
        network.national.box_key_connection_id,
    }
    for conn_id in key_ids:
        assert connections[conn_id]["password"] == keys[conn_id], f"{conn_id} does not hold its own key"
    box = connections[network.national.box_key_connection_id]
    assert json.loads(box["extra"])["public_key"] == keys[f"{network.national.box_key_connection_id}.public"]
    landing = connections[network.national.landing_zone.connection_id]
    extra = json.loads(landing["extra"])
    assert landing["conn_type"] == "aws" and extra["endpoint_url"].startswith("https://")
    assert extra["verify"] == "/opt/eds/certs/ca.crt"
    assert "login" not in landing and "password" not in landing, "S3 logins are each zone's, in its own file"
    expected_dbs = {p.warehouse_connection_id for p in network.platforms}
    expected_dbs |= {network.catalogue_connection_id, network.national.tables_connection_id}
    expected_dbs |= {b.source_connection_id for b in network.local_bases}
    assert set(databases) == expected_dbs


def test_connection_template_honours_environment_and_overrides(provision: Any, network: Any, secrets_dir: Path) -> None:
    roles = provision.connection_roles(network)
    template = provision.load_template()
    base = network.local_bases[0].source_connection_id
    template["overrides"] = {base: {"host": "eds.hopital.example", "x-create-database": False}}
    lookup = provision.secrets_lookup(secrets_dir, env={"EDS_DB_HOST": "10.0.0.5", "EDS_DB_PORT": "5433"})
    connections, databases = provision.render_connections(template, roles, lookup)
    assert connections[base]["host"] == "eds.hopital.example" and base not in databases
    assert connections[network.catalogue_connection_id]["host"] == "10.0.0.5"
    assert connections[network.catalogue_connection_id]["port"] == 5433


def test_provision_names_the_fix_when_a_key_is_missing(provision: Any, network: Any, tmp_path: Path) -> None:
    for zone in provision.database_zones(network):
        (tmp_path / provision.pg_password_secret(zone)).write_text("x")
    (tmp_path / "eds_keys").write_text('"unrelated": "x"\n')
    with pytest.raises(provision.ProvisionError, match="create-secrets.sh"):
        provision.render_connections(
            provision.load_template(), provision.connection_roles(network), provision.secrets_lookup(tmp_path, env={})
        )


def test_provision_exports_connections_as_private_airflow_conn_variables(
    provision: Any, network: Any, secrets_dir: Path, tmp_path: Path
) -> None:
    lookup = provision.secrets_lookup(secrets_dir, env={})
    connections, _ = provision.render_connections(
        provision.load_template(), provision.connection_roles(network), lookup
    )
    out = tmp_path / "conns.env"
    provision.write_private(out, provision.connections_env(connections))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = out.read_text().splitlines()
    assert len(lines) == len(connections)
    for line in lines:
        name, value = line.split("=", 1)
        conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
        assert name.startswith("AIRFLOW_CONN_") and json.loads(value) == connections[conn_id]


def test_airflow_init_mounts_every_secret_the_template_reads(services: dict[str, Any]) -> None:
    template = json.dumps(yaml.safe_load((DEPLOY / "airflow" / "connections.template.yaml").read_text()))
    read = set(re.findall(r"\$\{secret:([A-Za-z0-9_.-]+)\}", template)) | {"eds_keys", "airflow_admin_password"}
    mounted = set(services["airflow-init"]["secrets"])
    assert read <= mounted, read - mounted
    script = (DEPLOY / "airflow" / "airflow-init.sh").read_text()
    steps = [script.index(s) for s in ("airflow db migrate", "airflow users create", "provision.py")]
    assert steps == sorted(steps), "migrate, then admin user, then connections"
    assert services["airflow-init"]["command"] == ["bash", "/opt/eds/deploy/airflow-init.sh"]


# -- make fragment ----------------------------------------------------------------------------------


def test_make_fragment_defines_compose_targets_with_tab_indented_recipes(tmp_path: Path) -> None:
    fragment = DEPLOY / "Makefile.compose"
    text = fragment.read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", text, re.MULTILINE))
    assert {"compose-up", "compose-down", "compose-logs"} <= targets
    in_rule = False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^[a-z][a-z-]*:", line):
            in_rule = True
        elif in_rule and line.strip() and not line.startswith("#"):
            assert line.startswith("\t"), f"line {number} of a recipe is not tab-indented: {line!r}"
        elif not line.strip():
            in_rule = False
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    (tmp_path / "Makefile").write_text(f"include {fragment}\n")
    plan = run(["make", "-n", "-C", str(tmp_path), "compose-up"]).stdout
    order = [plan.index(s) for s in ("create-secrets.sh", "make-certs.sh", "up -d --build")]
    assert order == sorted(order), plan
    assert "-f docker-compose.yaml -f deploy/compose.zones.yaml up -d" in plan and f"cd {ROOT}" in plan


def test_the_image_build_checks_the_edge_provider_the_stack_runs() -> None:
    checks = [ln for ln in DOCKERFILE.read_text().splitlines() if "import airflow.providers." in ln]
    assert checks and "airflow.providers.edge3" in checks[0], "the build must fail when the Edge provider is missing"


def test_the_image_carries_no_dev_dependency() -> None:
    """moto (the embedded stack's S3 endpoint) is a dev dependency: not in the runtime lock the image installs."""
    runtime = {ln.split("==")[0].lower() for ln in (ROOT / "requirements.txt").read_text().splitlines() if "==" in ln}
    dev = {ln.split("==")[0].lower() for ln in (ROOT / "requirements-dev.txt").read_text().splitlines() if "==" in ln}
    assert "moto" in dev and "moto" not in runtime
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile and "requirements-dev" not in dockerfile


def test_a_pseudonymisation_key_rotated_in_eds_keys_carries_its_bumped_version(
    provision: Any, network: Any, secrets_dir: Path, tmp_path: Path
) -> None:
    """Every key connection carries its version (v1 by default); a rotation bumps `<id>.version` with the value."""
    roles = provision.connection_roles(network)
    connections, _ = provision.render_connections(
        provision.load_template(), roles, provision.secrets_lookup(secrets_dir, env={})
    )
    idf = network.platforms[0].key_connection_id
    key_ids = {p.key_connection_id for p in network.platforms} | {
        network.transport_key_connection_id,
        network.national.key_connection_id,
        network.national.box_key_connection_id,
    }
    assert {json.loads(connections[c]["extra"])["version"] for c in key_ids} == {"v1"}
    rotated = tmp_path / "secrets"
    shutil.copytree(secrets_dir, rotated)
    keys = yaml.safe_load((rotated / "eds_keys").read_text())
    keys[idf], keys[f"{idf}.version"] = "bmV3IGtleSB2YWx1ZSBvZiAzMiBieXRlcyBleGFjdGx5IQ==", "v2"
    (rotated / "eds_keys").write_text(yaml.safe_dump(keys))
    after, _ = provision.render_connections(provision.load_template(), roles, provision.secrets_lookup(rotated, env={}))
    assert json.loads(after[idf]["extra"])["version"] == "v2" and after[idf]["password"] == keys[idf]
    assert json.loads(after[network.transport_key_connection_id]["extra"])["version"] == "v1"
