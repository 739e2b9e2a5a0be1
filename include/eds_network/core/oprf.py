"""RFC 9497 OPRF mode (mode 0x00) with the ristretto255-SHA512 suite: blind, evaluate, finalize.

The group arithmetic is libsodium's ristretto255 (through `rbcl`, which bundles libsodium and wraps its
`crypto_core_ristretto255_*` / `crypto_scalarmult_ristretto255` functions); this module only composes them as
RFC 9497 says, plus expand_message_xmd with SHA-512 (RFC 9380 section 5.3.1) for HashToGroup and HashToScalar.

The parties: the *client* (a hospital) blinds its input and finalizes; the *server* (the key holder of a
platform's level-1 key) evaluates blinded elements with its private scalar and sees nothing else. A blinded
element is a uniformly random group element whatever the input: it says nothing about the identity.

Elements and scalars are 32 bytes (scalars little-endian, as libsodium and the RFC's ristretto255 suite
encode them); the output is 64 bytes (SHA-512).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import rbcl

from eds_network.core.errors import EdsError

SUITE = "ristretto255-SHA512"
MODE_OPRF = 0x00
CONTEXT = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + SUITE.encode()
ELEMENT_BYTES = 32
SCALAR_BYTES = 32
OUTPUT_BYTES = 64
_IDENTITY = bytes(ELEMENT_BYTES)
_HASH = hashlib.sha512
_HASH_BLOCK = 128  # s_in_bytes of SHA-512
_HASH_OUT = 64  # b_in_bytes of SHA-512


class OprfError(EdsError):
    """An OPRF step refused its input (RFC 9497 InvalidInputError / DeserializeError / DeriveKeyPairError)."""


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 expand_message_xmd with SHA-512: `length` uniform bytes from `msg` under tag `dst`."""
    ell = -(-length // _HASH_OUT)
    if ell > 255 or length > 65535 or len(dst) > 255:
        raise OprfError("expand_message_xmd: requested length or domain tag too long")
    dst_prime = dst + _i2osp(len(dst), 1)
    b0 = _HASH(bytes(_HASH_BLOCK) + msg + _i2osp(length, 2) + b"\x00" + dst_prime).digest()
    blocks = [_HASH(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b0, blocks[-1], strict=True))
        blocks.append(_HASH(mixed + _i2osp(i, 1) + dst_prime).digest())
    return b"".join(blocks)[:length]


def hash_to_group(msg: bytes) -> bytes:
    """HashToGroup of the suite: ristretto255's one-way map of 64 expanded bytes."""
    uniform = expand_message_xmd(msg, b"HashToGroup-" + CONTEXT, 64)
    return rbcl.crypto_core_ristretto255_from_hash(uniform)


def hash_to_scalar(msg: bytes, dst: bytes | None = None) -> bytes:
    """HashToScalar of the suite: 64 expanded bytes reduced modulo the group order (little-endian)."""
    uniform = expand_message_xmd(msg, dst if dst is not None else b"HashToScalar-" + CONTEXT, 64)
    return rbcl.crypto_core_ristretto255_scalar_reduce(uniform)


def _check_element(element: bytes, what: str) -> bytes:
    element = bytes(element)
    if len(element) != ELEMENT_BYTES or not rbcl.crypto_core_ristretto255_is_valid_point(element):
        raise OprfError(f"{what} is not a valid ristretto255 element")
    if element == _IDENTITY:
        raise OprfError(f"{what} is the identity element")
    return element


def _check_scalar(scalar: bytes, what: str) -> bytes:
    scalar = bytes(scalar)
    if len(scalar) != SCALAR_BYTES:
        raise OprfError(f"{what} must be {SCALAR_BYTES} bytes")
    # A canonical scalar is below the group order: reducing it changes nothing; zero is refused.
    if rbcl.crypto_core_ristretto255_scalar_reduce(scalar + bytes(32)) != scalar or scalar == bytes(32):
        raise OprfError(f"{what} is not a canonical non-zero scalar")
    return scalar


@dataclass(frozen=True)
class ServerKey:
    """The server's private scalar skS and its public element pkS. `repr` never shows the scalar."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:
        return f"ServerKey(public={self.public.hex()[:16]}…)"

    @classmethod
    def from_private(cls, private: bytes) -> ServerKey:
        private = _check_scalar(private, "private key")
        return cls(private, rbcl.crypto_scalarmult_ristretto255_base(private))


def generate_key_pair() -> ServerKey:
    """A fresh random server key (libsodium's CSPRNG)."""
    return ServerKey.from_private(rbcl.crypto_core_ristretto255_scalar_random())


def derive_key_pair(seed: bytes, info: bytes) -> ServerKey:
    """RFC 9497 DeriveKeyPair: a deterministic key from a 32-byte seed and a public `info` label."""
    if len(seed) != 32:
        raise OprfError("DeriveKeyPair: the seed must be 32 bytes")
    derive_input = seed + _i2osp(len(info), 2) + info
    dst = b"DeriveKeyPair" + CONTEXT
    for counter in range(256):
        private = hash_to_scalar(derive_input + _i2osp(counter, 1), dst)
        if private != bytes(SCALAR_BYTES):
            return ServerKey.from_private(private)
    raise OprfError("DeriveKeyPair: no non-zero scalar in 256 tries")  # pragma: no cover - probability 2^-2000


def blind(client_input: bytes, blind_scalar: bytes | None = None) -> tuple[bytes, bytes]:
    """Client: (blind, blindedElement) for an input. `blind_scalar` is for test vectors only."""
    r = _check_scalar(blind_scalar, "blind") if blind_scalar is not None else _random_scalar()
    element = hash_to_group(client_input)
    if element == _IDENTITY:
        raise OprfError("the input maps to the identity element")  # pragma: no cover - probability 2^-252
    return r, rbcl.crypto_scalarmult_ristretto255(r, element)


def _random_scalar() -> bytes:
    return rbcl.crypto_core_ristretto255_scalar_random()


def blind_evaluate(key: ServerKey, blinded_element: bytes) -> bytes:
    """Server: evaluatedElement = skS * blindedElement (the element is checked first)."""
    return rbcl.crypto_scalarmult_ristretto255(key.private, _check_element(blinded_element, "blinded element"))


def finalize(client_input: bytes, blind_scalar: bytes, evaluated_element: bytes) -> bytes:
    """Client: unblind the evaluated element and hash it with the input into the 64-byte PRF output."""
    evaluated = _check_element(evaluated_element, "evaluated element")
    inverse = rbcl.crypto_core_ristretto255_scalar_invert(_check_scalar(blind_scalar, "blind"))
    unblinded = rbcl.crypto_scalarmult_ristretto255(inverse, evaluated)
    return _HASH(
        _i2osp(len(client_input), 2) + client_input + _i2osp(len(unblinded), 2) + unblinded + b"Finalize"
    ).digest()


def evaluate(key: ServerKey, client_input: bytes) -> bytes:
    """The PRF itself, computed by the key holder on a clear input (tests and key-rotation checks only)."""
    unblinded = rbcl.crypto_scalarmult_ristretto255(key.private, hash_to_group(client_input))
    return _HASH(
        _i2osp(len(client_input), 2) + client_input + _i2osp(len(unblinded), 2) + unblinded + b"Finalize"
    ).digest()
