"""The stores' least-privilege spec (dev/access.py): the MinIO policy files of docker-compose are the ones the
embedded stack gives its moto users (plus the ListBucket prefix conditions moto cannot evaluate), and no zone's
policy reaches another zone's area."""

from __future__ import annotations

import json

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.dev import access
from eds_network.orchestration.zone_connections import all_zones

NETWORK = load_network()


def test_minio_policy_files_match_the_embedded_stack():
    expected = access.minio_policies(NETWORK)
    on_disk = {p.name: json.loads(p.read_text()) for p in access.MINIO_POLICY_DIR.glob("*.json")}
    assert on_disk == expected, "deploy/minio/policies is stale: run access.write_minio_policies(load_network())"
    for zone in all_zones(NETWORK):
        moto, minio = access.s3_policy(NETWORK, zone, prefix_conditions=False), access.s3_policy(NETWORK, zone)
        if moto is None:
            assert minio is None
            continue
        strip = [{k: v for k, v in s.items() if k != "Condition"} for s in minio["Statement"]]
        assert strip == moto["Statement"], zone


def _resources(policy: dict | None) -> set[str]:
    return {r for s in (policy or {}).get("Statement", []) for r in s["Resource"]}


def test_a_hospital_policy_names_only_its_own_intake_prefix():
    for b in NETWORK.local_bases:
        res = _resources(access.s3_policy(NETWORK, zones.local(b.id)))
        intake, ex = NETWORK.platform_of(b.id).intake, NETWORK.platform_of(b.id).key_holder.exchange
        assert res == {
            f"arn:aws:s3:::{intake.bucket}",
            f"arn:aws:s3:::{intake.bucket}/{intake.prefix}{b.id}/*",
            f"arn:aws:s3:::{ex.bucket}",
            f"arn:aws:s3:::{ex.bucket}/{ex.prefix}{b.id}/*",
        }
        listing = next(
            s for s in access.s3_policy(NETWORK, zones.local(b.id))["Statement"] if "s3:ListBucket" in s["Action"]
        )
        assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{intake.prefix}{b.id}/*"]}}


def test_only_the_national_zone_reaches_the_landing_zone():
    landing = NETWORK.national.landing_zone.bucket
    for zone in all_zones(NETWORK):
        touches = any(r.split(":::")[1].split("/")[0] == landing for r in _resources(access.s3_policy(NETWORK, zone)))
        assert touches == (zone == zones.NATIONAL), zone


def test_role_sql_grants_each_source_and_warehouse_to_its_zone_only():
    sql = access.pg_statements(NETWORK, {z: "pw" for z in all_zones(NETWORK)})
    for b in NETWORK.local_bases:
        text = " ".join(sql[f"src_{b.id}"])
        assert access.principal(zones.local(b.id)) in text
        assert not any(access.principal(z) in text for z in all_zones(NETWORK) if z != zones.local(b.id))
    for p in NETWORK.platforms:
        text = " ".join(sql[f"wh_{p.id}"])
        assert f"OWNER TO {access.principal(zones.platform(p.id))}" in text
        assert not any(access.principal(z) in text for z in all_zones(NETWORK) if z != zones.platform(p.id))
    assert "GRANT INSERT ON catalogue.audit" in " ".join(sql["catalogue"])
