"""RFC 9497 OPRF (ristretto255-SHA512, mode 0x00): the appendix A.1.1 test vectors, and the protocol's properties."""

from __future__ import annotations

import pytest

from eds_network.core import oprf

# RFC 9497 appendix A.1.1 (ristretto255-SHA512, OPRF mode).
SEED = bytes.fromhex("a3" * 32)
KEY_INFO = bytes.fromhex("74657374206b6579")  # "test key"
SK_SM = "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e"
BLIND = "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"
VECTORS = [
    {
        "input": "00",
        "blinded": "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
        "evaluated": "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
        "output": "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3"
        "ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6",
    },
    {
        "input": "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "blinded": "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
        "evaluated": "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
        "output": "f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4"
        "f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73",
    },
]


def test_expand_message_xmd_sha512_matches_rfc_9380():
    # RFC 9380 appendix K.3 (expand_message_xmd, SHA-512, len_in_bytes = 0x20).
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    assert (
        oprf.expand_message_xmd(b"abcdef0123456789", dst, 32).hex()
        == "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58"
    )


def test_derive_key_pair_matches_the_rfc_key():
    key = oprf.derive_key_pair(SEED, KEY_INFO)
    assert key.private.hex() == SK_SM
    assert SK_SM not in repr(key)


@pytest.mark.parametrize("vector", VECTORS, ids=["input-00", "input-5a17"])
def test_blind_evaluate_finalize_match_the_rfc_vectors(vector):
    key = oprf.ServerKey.from_private(bytes.fromhex(SK_SM))
    client_input = bytes.fromhex(vector["input"])
    r, blinded = oprf.blind(client_input, bytes.fromhex(BLIND))
    assert blinded.hex() == vector["blinded"]
    evaluated = oprf.blind_evaluate(key, blinded)
    assert evaluated.hex() == vector["evaluated"]
    assert oprf.finalize(client_input, r, evaluated).hex() == vector["output"]
    assert oprf.evaluate(key, client_input).hex() == vector["output"]


def test_random_blinds_hide_the_input_and_give_the_same_output():
    key = oprf.generate_key_pair()
    identity = b"1850175123456|1985-01-17|M"
    r1, b1 = oprf.blind(identity)
    r2, b2 = oprf.blind(identity)
    assert b1 != b2 and r1 != r2  # the key holder cannot tell two requests for one identity apart
    out1 = oprf.finalize(identity, r1, oprf.blind_evaluate(key, b1))
    out2 = oprf.finalize(identity, r2, oprf.blind_evaluate(key, b2))
    assert out1 == out2 == oprf.evaluate(key, identity)
    assert oprf.evaluate(oprf.generate_key_pair(), identity) != out1  # another key, another pseudonym


@pytest.mark.parametrize("bad", [bytes(32), b"\xff" * 32, b"\x01" * 31])
def test_the_server_refuses_what_is_not_a_valid_non_identity_element(bad):
    with pytest.raises(oprf.OprfError, match="blinded element"):
        oprf.blind_evaluate(oprf.generate_key_pair(), bad)


def test_a_non_canonical_or_zero_scalar_is_refused():
    with pytest.raises(oprf.OprfError, match="private key"):
        oprf.ServerKey.from_private(b"\xff" * 32)
    with pytest.raises(oprf.OprfError, match="blind"):
        oprf.blind(b"x", bytes(32))
