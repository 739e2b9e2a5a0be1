"""The production path's small parts: the S3 clients' CA, the explicit vocabulary choice, the seed target, the
latest night the scheduler runs, the private CA of the rehearsal."""

from __future__ import annotations

import datetime as dt
import ssl
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from eds_network import cli
from eds_network.core.config import load_network
from eds_network.core.errors import ConfigError
from eds_network.core.storage import S3Endpoint, verify_of
from eds_network.dev.cluster import latest_night
from eds_network.dev.tls import private_ca
from eds_network.orchestration.platform_tasks import platform_vocabulary
from eds_network.platform.standardise import VOCABULARY_ENV

PARIS = ZoneInfo("Europe/Paris")


def test_a_connection_extra_verify_is_a_ca_bundle_a_boolean_or_absent():
    assert verify_of(None) is None and verify_of("") is None
    assert verify_of("false") is False and verify_of(True) is True
    assert verify_of("/run/secrets/ca.pem") == "/run/secrets/ca.pem"


def test_the_s3_client_is_built_with_the_connection_ca_and_pyarrow_gets_it_too(monkeypatch, tmp_path):
    files = private_ca(tmp_path / "tls")
    ep = S3Endpoint("https://localhost:1", "k", "s", verify=str(files.ca))
    client = ep.client()
    assert client._endpoint.http_session._verify == str(files.ca)
    assert ep.ca_bundle == str(files.ca)
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/eds/ca.pem")
    assert S3Endpoint("https://x", "k", "s").ca_bundle == "/etc/eds/ca.pem"


def test_the_national_tables_file_io_carries_the_private_ca(tmp_path):
    from eds_network.national.tables import CA_BUNDLE_PROPERTY, CaBundleFileIO, NationalTables

    files = private_ca(tmp_path / "tls")
    landing = S3Endpoint("https://localhost:1", "k", "s", verify=str(files.ca))
    io = CaBundleFileIO({"s3.endpoint": landing.endpoint_url, CA_BUNDLE_PROPERTY: str(files.ca)})
    fs = io._initialize_s3_fs(None)
    assert fs.__reduce__()[1][0]["tls_ca_file_path"] == str(files.ca)
    tables = NationalTables("postgresql://u:p@localhost:1/hdh", landing)
    assert tables  # the catalog properties name the FileIO only when a CA is given (checked on the real stack)


def test_the_private_ca_signs_a_server_certificate_a_client_verifies(tmp_path):
    files = private_ca(tmp_path / "tls")
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))  # the pair matches
    assert (tmp_path / "tls" / "ca.key").stat().st_mode & 0o077 == 0
    assert private_ca(tmp_path / "tls") == files  # made once


def test_a_platform_without_vocabulary_fails_at_once_unless_none_is_chosen(monkeypatch, tmp_path):
    monkeypatch.delenv(VOCABULARY_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"platform idf: no OMOP vocabulary.*vocabulary: none"):
        platform_vocabulary(SimpleNamespace(id="idf", vocabulary="required"))
    assert platform_vocabulary(SimpleNamespace(id="idf", vocabulary="none")) is None
    monkeypatch.setenv(VOCABULARY_ENV, str(tmp_path / "missing.zip"))
    with pytest.raises(ConfigError, match="does not exist"):
        platform_vocabulary(SimpleNamespace(id="idf", vocabulary="required"))
    archive = tmp_path / "vocab.zip"
    archive.write_bytes(b"PK")
    monkeypatch.setenv(VOCABULARY_ENV, str(archive))
    assert platform_vocabulary(SimpleNamespace(id="idf", vocabulary="required")) == archive


def test_the_demo_platforms_require_their_vocabulary():
    assert {p.vocabulary for p in load_network().platforms} == {"required"}


def test_the_latest_night_is_the_last_complete_interval_of_the_schedule():
    network = load_network()
    start, end = latest_night(network, dt.datetime(2026, 12, 2, 11, 0, tzinfo=dt.UTC))
    assert (start, end) == (dt.datetime(2026, 12, 1, 1, tzinfo=PARIS), dt.datetime(2026, 12, 2, 1, tzinfo=PARIS))
    # just before 01:00 Paris the night before is still the latest complete one
    start, _ = latest_night(network, dt.datetime(2026, 12, 2, 0, 30, tzinfo=PARIS))
    assert start == dt.datetime(2026, 11, 30, 1, tzinfo=PARIS)


def test_eds_seed_targets_the_databases_a_connections_file_names(tmp_path):
    import json

    network = load_network()
    conns = {
        c: {"conn_type": "postgres", "host": "db.example", "port": 5432, "login": "eds_admin", "password": "p@ss/w",
            "schema": c}
        for c in [network.catalogue_connection_id, *(b.source_connection_id for b in network.local_bases)]
    }  # fmt: skip
    path = tmp_path / "connections.json"
    path.write_text(json.dumps(conns))
    dsns = cli.seed_dsns(network, str(path))
    b = network.local_bases[0]
    assert dsns[b.source_connection_id] == f"postgresql://eds_admin:p%40ss%2Fw@db.example:5432/{b.source_connection_id}"
    del conns[network.catalogue_connection_id]
    path.write_text(json.dumps(conns))
    with pytest.raises(Exception, match=network.catalogue_connection_id):
        cli.seed_dsns(network, str(path))
