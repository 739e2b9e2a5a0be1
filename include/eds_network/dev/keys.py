"""Key rotation on the embedded stack: a new secret and version in `.eds/secrets/keys.json`."""

from __future__ import annotations

import logging

from eds_network.core.errors import EdsError
from eds_network.keys.rotation import RETIRED_KEYS_FILE, next_version

log = logging.getLogger(__name__)


def rotate_stack_key(stack, network, conn_id: str) -> tuple[str, str]:
    """New secret and version for one key of the embedded stack (`.eds/secrets/keys.json`).

    The old secret moves to `keys.retired.json` (mode 0600, kept until its version is retired everywhere; the
    data never needs it: re-keying re-extracts from the sources), the connection's extra lists the retired
    versions, and Airflow's connections file is rewritten. Returns (old version, new version); no secret is
    returned, printed or logged.
    """
    import datetime as dt
    import json
    import secrets as _secrets

    keys = stack.keys(network)
    if conn_id not in keys:
        raise EdsError(f"no key connection {conn_id!r} in the embedded stack's secrets")
    entry = keys[conn_id]
    old = str(entry.get("extra", {}).get("version", "v1"))
    new = next_version(old)
    retired_path = stack.secrets_dir / RETIRED_KEYS_FILE
    retired = json.loads(retired_path.read_text()) if retired_path.exists() else {}
    retired.setdefault(conn_id, {})[old] = {
        "password": entry["password"],
        "retired_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    _write_private(retired_path, retired)
    extra = dict(entry.get("extra", {}))
    extra["version"] = new
    extra["retired_versions"] = [*extra.get("retired_versions", []), old]
    keys[conn_id] = {"password": _secrets.token_hex(32), "extra": extra}
    _write_private(stack.secrets_dir / "keys.json", keys)
    stack.write_connections(network)
    log.info("key %s rotated: version %s -> %s", conn_id, old, new)
    return old, new


def _write_private(path, doc) -> None:
    import json
    import os

    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    tmp.replace(path)
