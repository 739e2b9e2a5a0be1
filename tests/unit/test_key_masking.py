"""Keys read through the Airflow adapter are registered with Airflow's secrets masker in every spelling."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap

import pytest

from eds_network.core.crypto import Key
from eds_network.core.errors import EdsError

PROBE = textwrap.dedent(
    """
    import base64, json
    from airflow.sdk._shared.secrets_masker import redact
    from eds_network.orchestration import connections as airflow_adapter
    out = {}
    for conn_id in ("eds_key_hex", "eds_key_b64"):
        k = airflow_adapter.key(conn_id, "probe")
        spellings = [k.secret.hex(), k.secret.hex().upper(), base64.b64encode(k.secret).decode()]
        out[conn_id] = {
            "version": k.version,
            "repr_has_secret": any(s in repr(k) for s in spellings),
            "redacted": [redact(f"a log line with {s} inside") for s in spellings[:1] + spellings[2:]],
        }
    private, version = airflow_adapter.box_private_key("eds_key_box")
    out["box"] = {"redacted": redact("box " + private.hex() + " " + base64.b64encode(private).decode())}
    print("JSON:" + json.dumps(out))
    """
)


def test_keys_are_masked_in_hex_and_base64_whatever_spelling_the_connection_uses(tmp_path):
    hex_key, b64_raw, box_raw = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW_CONN_EDS_KEY_HEX": json.dumps(
            {"conn_type": "generic", "password": hex_key.hex(), "extra": {"version": "v3"}}
        ),
        "AIRFLOW_CONN_EDS_KEY_B64": json.dumps(
            {"conn_type": "generic", "password": base64.b64encode(b64_raw).decode(), "extra": {"version": "v1"}}
        ),
        "AIRFLOW_CONN_EDS_KEY_BOX": json.dumps(
            {"conn_type": "generic", "password": base64.b64encode(box_raw).decode(), "extra": {"version": "v1"}}
        ),
    }
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("JSON:"))[5:])
    assert out["eds_key_hex"]["version"] == "v3"
    for conn_id in ("eds_key_hex", "eds_key_b64"):
        assert not out[conn_id]["repr_has_secret"]
        for line in out[conn_id]["redacted"]:
            assert line == "a log line with *** inside", conn_id
    assert out["box"]["redacted"] == "box *** ***"
    everything = res.stdout + res.stderr
    for raw in (hex_key, b64_raw, box_raw):
        assert raw.hex() not in everything and base64.b64encode(raw).decode() not in everything


def test_a_malformed_key_error_does_not_echo_the_value():
    with pytest.raises(EdsError) as info:
        Key.from_secret("eds_key_l1_idf", "not-a-key-but-a-secret-value!", "v2")
    assert "not-a-key-but-a-secret-value" not in str(info.value)
    assert "eds_key_l1_idf" in str(info.value) and "v2" in str(info.value)
