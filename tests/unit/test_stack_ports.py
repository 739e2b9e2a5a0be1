"""The embedded stack's ports stay out of the kernel's range for outgoing connections.

A server port in that range can be held by the client side of any connection (or one in TIME_WAIT) when the
server starts, and the start then fails at random: CI saw `airflow api-server` exit 3 on a port in it.
"""

from __future__ import annotations

import logging

import pytest

from eds_network.dev.stack import Stack, ephemeral_port_range

LINUX_DEFAULT_LOW = 32768


def _low() -> int:
    span = ephemeral_port_range()
    return span[0] if span else LINUX_DEFAULT_LOW


def test_default_ports_lie_below_the_ephemeral_range(monkeypatch):
    for var in ("EDS_PG_PORT", "EDS_S3_PORT", "EDS_API_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = Stack.default()
    assert max(s.pg_port, s.s3_port, s.api_port) < _low()
    assert s.warn_ephemeral_ports() == []


def test_the_test_stack_ports_lie_below_the_ephemeral_range():
    s = Stack.default()  # the test session's ports (tests/conftest.py)
    assert max(s.pg_port, s.s3_port, s.api_port) < _low()


def test_a_port_inside_the_range_is_named_in_a_warning(tmp_path, caplog):
    if ephemeral_port_range() is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range on this system")
    inside = _low() + 1000
    s = Stack(root=tmp_path, pg_port=inside, s3_port=25900, api_port=8080)
    with caplog.at_level(logging.WARNING, logger="eds_network.dev.stack"):
        warnings = s.warn_ephemeral_ports()
    assert len(warnings) == 1 and warnings[0].startswith(f"EDS_PG_PORT={inside} ")
    assert f"EDS_PG_PORT={inside}" in caplog.text
