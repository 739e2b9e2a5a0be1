"""Each zone's connections file holds its own secrets only (no zone gets another zone's key, source or login)."""

from __future__ import annotations

import itertools

import pytest

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.dev.stack import Stack
from eds_network.orchestration.zone_connections import (
    CENTRAL_CONNECTION_IDS,
    TRUST_STORE_CONNECTION_ID,
    Login,
    ZoneLogins,
    all_zones,
    principal,
    signing_connection_id,
    zone_connection_ids,
    zone_connections,
)

NETWORK = load_network()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every zone's connections file, each zone with its own (distinct) PostgreSQL and S3 logins."""
    stack = Stack(root=tmp_path_factory.mktemp("eds"), pg_port=1, s3_port=2, api_port=3)
    conns = stack.connections(NETWORK)
    out = {}
    for z in all_zones(NETWORK):
        logins = ZoneLogins(pg=Login(principal(z), f"pg-secret-of-{z}"), s3=Login(principal(z), f"s3-secret-of-{z}"))
        out[z] = zone_connections(NETWORK, z, conns, logins)
    return conns, out


def _secrets(conns: dict) -> set[str]:
    return {c["password"] for c in conns.values() if c.get("password")}


# the one secret legitimately shared: the transport key (every hospital); a platform's level-1 key is its key
# holder's alone (the hospitals get level-1 pseudonyms by the OPRF round trip)
def _shared(all_conns) -> set[str]:
    return {all_conns[NETWORK.transport_key_connection_id]["password"]}


def test_no_zone_holds_a_secret_of_another_zone(files):
    all_conns, by_zone = files
    shared = _shared(all_conns)
    for a, b in itertools.combinations(by_zone, 2):
        common = (_secrets(by_zone[a]) & _secrets(by_zone[b])) - shared
        assert not common, f"{a} and {b} share {len(common)} secret(s)"


def test_shared_keys_stay_inside_the_platform_family(files):
    all_conns, by_zone = files
    for p in NETWORK.platforms:
        key = all_conns[p.key_connection_id]["password"]
        holders = {z for z, c in by_zone.items() if key in _secrets(c)}
        assert holders == {zones.keys(p.id)}
        for b in p.members:
            assert p.key_connection_id not in by_zone[zones.local(b.id)]
    transport = all_conns[NETWORK.transport_key_connection_id]["password"]
    assert {z for z, c in by_zone.items() if transport in _secrets(c)} == {
        zones.local(b.id) for b in NETWORK.local_bases
    }


def test_platform_holds_key_versions_only_and_hospitals_the_public_box_key(files):
    all_conns, by_zone = files
    box = NETWORK.national.box_key_connection_id
    for p in NETWORK.platforms:
        mine = by_zone[zones.platform(p.id)]
        assert "password" not in mine[p.key_connection_id]
        assert mine[p.key_connection_id]["extra"]["version"] == all_conns[p.key_connection_id]["extra"]["version"]
        for other in (NETWORK.transport_key_connection_id, NETWORK.national.key_connection_id):
            assert other not in mine
        # the box *public* key only (feasibility counts are sealed to the HDH): never the private key
        assert "password" not in mine[box] and mine[box]["extra"]["public_key"]
        assert not any(b.source_connection_id in mine for b in NETWORK.local_bases)
    for b in NETWORK.local_bases:
        mine = by_zone[zones.local(b.id)]
        assert "password" not in mine[box] and mine[box]["extra"]["public_key"]
        assert NETWORK.national.key_connection_id not in mine
        assert [x.id for x in NETWORK.local_bases if x.source_connection_id in mine] == [b.id]
    national = by_zone[zones.NATIONAL]
    assert national[box]["password"] == all_conns[box]["password"]
    assert not any(b.source_connection_id in national for b in NETWORK.local_bases)
    assert not any(p.warehouse_connection_id in national for p in NETWORK.platforms)


def test_every_database_and_s3_connection_logs_in_as_the_zone(files):
    _, by_zone = files
    for z, conns in by_zone.items():
        for conn_id, c in conns.items():
            if c.get("conn_type") in ("postgres", "aws"):
                assert c["login"] == principal(z), (z, conn_id)


def test_each_zone_signs_with_its_own_key_and_trusts_the_others_public_keys(files):
    all_conns, by_zone = files
    store = all_conns[TRUST_STORE_CONNECTION_ID]["extra"]["public_keys"]
    for z, conns in by_zone.items():
        assert conns[TRUST_STORE_CONNECTION_ID]["extra"]["public_keys"] == store
        assert "password" not in conns[TRUST_STORE_CONNECTION_ID]
        signing = [i for i in conns if i.startswith("eds_sign_")]
        assert signing == ([] if zones.kind(z) == "keys" else [signing_connection_id(z)])
        if signing:
            assert store[z] == conns[signing[0]]["extra"]["public_key"]


def test_ids_listed_match_the_file_and_the_central_api_is_no_zone_s(files):
    _, by_zone = files
    for z, conns in by_zone.items():
        assert set(zone_connection_ids(NETWORK, z)) == set(conns)
        assert not set(CENTRAL_CONNECTION_IDS) & set(conns)
