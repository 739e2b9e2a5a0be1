"""Zone names and signed documents (core): a signature covers every field, and only the expected key verifies."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from eds_network.core import signing, zones
from eds_network.core.errors import IntegrityError

KEY = bytes(SigningKey.generate())
OTHER = bytes(SigningKey.generate())


def test_zone_queues_are_named_after_their_zone():
    assert zones.queue(zones.local("hosp_a")) == "local-hosp_a"
    assert zones.queue(zones.platform("idf")) == "platform-idf"
    assert zones.kind(zones.keys("idf")) == "keys"
    assert zones.queue(zones.NATIONAL) == "national"


def test_a_signed_document_verifies_with_its_public_key():
    doc = signing.sign_document(
        {"base": "hosp_a", "site_number": 1, "tables": {"person": {"rows": 3}}}, KEY, "local:hosp_a"
    )
    assert signing.verify_document(doc, signing.public_key_of(KEY), what="manifest")["base"] == "hosp_a"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(site_number=2),
        lambda d: d["tables"]["person"].update(rows=4),
        lambda d: d.pop("signature"),
        lambda d: d["signature"].update(value="AAAA"),
    ],
)
def test_any_change_breaks_the_signature(tamper):
    doc = signing.sign_document({"base": "hosp_a", "site_number": 1, "tables": {"person": {"rows": 3}}}, KEY, "k")
    tamper(doc)
    with pytest.raises(IntegrityError, match="manifest"):
        signing.verify_document(doc, signing.public_key_of(KEY), what="manifest")


def test_another_key_does_not_verify():
    doc = signing.sign_document({"base": "hosp_a"}, OTHER, "local:hosp_a")
    with pytest.raises(IntegrityError, match="bad signature"):
        signing.verify_document(doc, signing.public_key_of(KEY), what="manifest")
