"""Pseudonymisation: keyed HMAC-SHA-256 pseudonyms, a distinct key per level (domain).

Level 1 (local -> mutualised platform)
  linkage identity  = eds_network.core.identity.linkage_identity (NIR | birth date | sex, normalised; else a
                      site-scoped SITE | site | IPP)
  level-1 pseudonym = the RFC 9497 OPRF (ristretto255-SHA512) of the identity under the platform's key, which only
                      the key holder has: the hospital blinds, the holder evaluates, the hospital finalizes and
                      keeps the result in its map (`eds_network.local.level1`)
  person_id         = the pseudonym's first 63 bits; the first half of the output (32 bytes) goes beside it in
                      `_person_digest`: the platform refuses two digests for one id (`core.digests`)
  other row ids     = every *_id column but person_id and concept ids (visits, events, care sites, providers,
                      locations, fact_id_1/2, preceding_visit_occurrence_id…): a keyed permutation per site
                      (eds_network.core.rowids, AES-256 under a key derived from the transport key and the
                      site), truncated to 63 bits: the site is not derivable, no local id can be read back,
                      a new transport key version changes them all (and re-extracts everything).

Transport token (for the national level, trust-centre pattern)
  token  = HMAC-SHA-256(network transport key, linkage identity), a key only hospitals hold;
  sealed = X25519 sealed box (libsodium, randomised) to the national public key. Platforms carry the sealed
  value, which differs on every row and links nothing; only the national step can open it.

Level 2 (national)
  person_id = first 63 bits of HMAC-SHA-256(national key, token): the same patient gets the same national
  pseudonym whatever platform the rows come from.

Removal and generalisation (level 1)
  person: month/day/datetime of birth, location and person_source_value emptied (year kept; month kept when the
  platform's policy says so); text columns emptied unless allow-listed (coded *_source_value only);
  location (when in scope): zip -> département, address / city / county / coordinates emptied.

Date shifting (off by default; `pseudonymisation.date_shift_days` on the platform)
  offset = HMAC-SHA-256(date-shift key, "DATE-SHIFT|" + linkage identity) mapped to [-N, N] days, never 0.
  The date-shift key is the hospitals' own dedicated secret (`date_shift_key_connection_id`), not the level-1
  key: one offset per patient, the same in every table and at every site, stable across nights and across
  rotations of the level-1 and transport keys (a rotation must not let anyone difference two versions of a
  patient's dates). Neither the platform nor the key holder has the key; a new date-shift key version changes
  the policy fingerprint (full re-extraction).

Every function works on whole Arrow columns per batch and hashes once per distinct patient.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from eds_network.core import digests, omop, rowids
from eds_network.core.config import NEVER_ALLOWED_TEXT
from eds_network.core.crypto import Key, hmac256, id63
from eds_network.core.errors import EdsError
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.identity import linkage_identity, normalise
from eds_network.core.nir import nir_is_valid
from eds_network.core.textmatch import NameMatcher

__all__ = ["linkage_identity", "normalise"]

ID_NAMESPACE = 10**12  # local ids must stay below this; site_number * 10**12 + id fits in 63 bits
# Text columns that may leave the local level: coded values, never free text or names.
DEFAULT_TEXT_ALLOW_LIST: frozenset[str] = frozenset(
    {
        "gender_source_value",
        "condition_source_value",
        "drug_source_value",
        "procedure_source_value",
        "measurement_source_value",
        "observation_source_value",
        "unit_source_value",
        "route_source_value",
        "dose_unit_source_value",
        "cause_source_value",
        "modifier_source_value",
        "qualifier_source_value",
        "condition_status_source_value",
        "death_type_source_value",
    }
)
# Person columns that are reduced whatever the allow-list says (full birth date, address link).
PERSON_DROPPED = ("month_of_birth", "day_of_birth", "birth_datetime", "location_id", "person_source_value")
# Location columns that locate a patient more precisely than the département: emptied; zip is generalised.
LOCATION_DROPPED = (
    "address_1",
    "address_2",
    "city",
    "county",
    "state",
    "latitude",
    "longitude",
    "location_source_value",
)
DATE_SHIFT_DOMAIN = "DATE-SHIFT|"
MICROS_PER_DAY = 86_400_000_000


def date_offset(date_shift_key: Key, identity: str, max_days: int) -> int:
    """A patient's date offset in [-max_days, max_days], never 0, keyed by the dedicated date-shift key on the
    patient's linkage identity (the same at every site; independent of the level-1 and transport keys)."""
    mac = hmac256(date_shift_key, DATE_SHIFT_DOMAIN + identity)
    r = int.from_bytes(mac[:8], "big") % (2 * max_days)
    return r - max_days if r < max_days else r - max_days + 1


def shift_dates(col: pa.Array, days: pa.Array) -> pa.Array:
    """Add `days` (int32, one per row) to a date32 or timestamp column, vectorised; nulls stay null."""
    if pa.types.is_date32(col.type):
        return pc.add(col.cast(pa.int32()), days).cast(pa.date32())
    if pa.types.is_timestamp(col.type):
        per_day = {"s": 86_400, "ms": 86_400_000, "us": MICROS_PER_DAY, "ns": MICROS_PER_DAY * 1000}[col.type.unit]
        delta = pc.multiply(days.cast(pa.int64()), pa.scalar(per_day, pa.int64()))
        return pc.add(col.cast(pa.int64()), delta).cast(col.type)
    raise TypeError(f"not a date or timestamp column: {col.type}")


def is_date_type(t: pa.DataType) -> bool:
    return pa.types.is_date32(t) or pa.types.is_timestamp(t)


def generalise_postcode(col: pa.Array) -> pa.Array:
    """French postcode -> département code, vectorised: 75011 -> 75, 20167 -> 2A, 20200 -> 2B, 97411 -> 974.

    Anything that is not a 5-digit postcode becomes null (it cannot be generalised, so it does not leave).
    """
    clean = pc.replace_substring(col, " ", "")
    valid = pc.match_substring_regex(clean, r"^\d{5}$")
    two = pc.utf8_slice_codeunits(clean, 0, 2)
    three = pc.utf8_slice_codeunits(clean, 0, 3)
    corsica = pc.if_else(pc.less(clean, pa.scalar("20200")), pa.scalar("2A"), pa.scalar("2B"))
    dept = pc.if_else(
        pc.equal(two, pa.scalar("20")),
        corsica,
        pc.if_else(pc.is_in(two, value_set=pa.array(["97", "98"])), three, two),
    )
    return pc.if_else(pc.fill_null(valid, False), dept, pa.scalar(None, pa.string()))


def policy_fingerprint(
    level1_version: str,
    *,
    date_shift_days: int,
    keep_birth_month: bool,
    allow_text: Iterable[str],
    transport_version: str | None = None,
    date_shift_version: str | None = None,
) -> str:
    """What the published rows of a table depend on besides the data: a change means a full re-extraction.

    The transport key's version is in it: that key seals the national tokens and keys the level-1 row ids."""
    text = hashlib.sha256(",".join(sorted(allow_text)).encode()).hexdigest()[:12]
    out = f"level1={level1_version};shift={date_shift_days};birth_month={int(keep_birth_month)};text={text}"
    if transport_version is not None:
        out += f";transport={transport_version}"
    if date_shift_days and date_shift_version is not None:
        out += f";shift_key={date_shift_version}"
    return out


class PersonMap:
    """Local person_id -> level-1 person id (and sealed transport token), once per patient.

    Identities and their level-1 PRF outputs (from the hospital's map) are fetched by the caller (only the persons
    a batch refers to) and passed in; this object keeps pseudonyms only. It never exposes an identity value.
    """

    def __init__(
        self,
        transport_key: Key,
        national_public_key: bytes,
        site: str,
        *,
        date_shift_days: int = 0,
        date_shift_key: Key | None = None,
    ):
        from nacl.public import PublicKey, SealedBox

        if date_shift_days < 0:
            raise EdsError("date_shift_days must be >= 0 (0 = off)")
        if date_shift_days and date_shift_key is None:
            raise EdsError("date shifting is on but the hospital has no date-shift key (date_shift_key_connection_id)")
        self.date_shift_key = date_shift_key
        self.transport_key = transport_key
        self._box = SealedBox(PublicKey(national_public_key))
        self.site = site
        self.row_key = rowids.level_key(transport_key.secret, f"level1|{site}")
        self.date_shift_days = date_shift_days
        self._ids: dict[int, int] = {}
        self._tokens: dict[int, bytes] = {}
        self._digests: dict[int, str] = {}
        self._shift: dict[int, int] = {}
        self._seen63: dict[int, bytes] = {}
        self.site_scoped = 0

    def missing(self, person_ids: Iterable[int]) -> list[int]:
        return [p for p in person_ids if p not in self._ids]

    def add(self, rows: Iterable[tuple[int, str | None, object, str, str, bytes | None]]) -> None:
        """rows: (local person_id, nir, birth_date, sex, ipp, level-1 PRF output or None if not evaluated yet).

        A patient without a level-1 output is not added (the caller quarantines its rows)."""
        for person_id, nir, birth_date, sex, ipp, digest in rows:
            if digest is None:
                continue
            digest = bytes(digest)
            ident = linkage_identity(nir, birth_date, sex, ipp, self.site)
            if ident.startswith("SITE|"):
                self.site_scoped += 1
            pid = id63(digest)
            prior = self._seen63.get(pid)
            if prior is not None and prior != digest:
                raise EdsError("level-1 person id collision (63-bit): refuse to merge two patients", table="person")
            self._seen63[pid] = digest
            self._ids[person_id] = pid
            self._digests[person_id] = digest[: digests.LEVEL1_DIGEST_BYTES].hex()
            self._tokens[person_id] = hmac256(self.transport_key, ident)
            if self.date_shift_days:
                self._shift[person_id] = date_offset(self.date_shift_key, ident, self.date_shift_days)

    def __contains__(self, person_id: int) -> bool:
        return person_id in self._ids

    def map_ids(self, local: pa.Array) -> pa.Array:
        """Vectorised: map a column of local person ids (via the distinct values) to level-1 ids."""
        uniq = pc.unique(local.drop_null()).to_pylist()
        missing = [u for u in uniq if u not in self._ids]
        if missing:
            raise EdsError(f"{len(missing)} person ids have no identity row at the local level", column="person_id")
        keys = pa.array(uniq, type=pa.int64())
        vals = pa.array([self._ids[u] for u in uniq], type=pa.int64())
        idx = pc.index_in(local, value_set=keys)
        return pc.take(vals, idx)

    def shift_days(self, local: pa.Array) -> pa.Array:
        """Vectorised: each row's date offset in days (int32), looked up once per distinct patient."""
        uniq = pc.unique(local.drop_null()).to_pylist()
        keys = pa.array(uniq, type=pa.int64())
        vals = pa.array([self._shift.get(u, 0) for u in uniq], type=pa.int32())
        return pc.take(vals, pc.index_in(local, value_set=keys))

    def digests(self, local: pa.Array) -> pa.Array:
        """The full level-1 digest (hex) beside each 63-bit id: the platform keeps it under a uniqueness
        constraint, so two patients sharing 63 bits are refused, never merged (`eds_network.core.digests`)."""
        return pa.array([None if p is None else self._digests[p] for p in local.to_pylist()], type=pa.string())

    def sealed_tokens(self, local: pa.Array) -> pa.Array:
        """One fresh sealed box per row: the same patient gives a different value every time."""
        return pa.array(
            [
                None if p is None else base64.b64encode(self._box.encrypt(self._tokens[p])).decode()
                for p in local.to_pylist()
            ],
            type=pa.string(),
        )


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
# French phones in every usual spelling: 0612345678, 06 12 34 56 78, 06.12.34.56.78, 06-12-34-56-78,
# +33 6 12 34 56 78, +33612345678, +33 (0)6 12 34 56 78, 0033 6 12 34 56 78.
_PHONE = re.compile(r"(?<![0-9])(?:0|\+ ?33 ?(?:\(0\) ?)?|0033 ?(?:\(0\) ?)?)[1-9](?:[ .-]?[0-9]{2}){4}(?![0-9])")
# A NIR with or without its key, any separators (spaces, dots, dashes) between its digits.
_SEP = r"[ .\-]?"
_NIR_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z])[12](?:" + _SEP + r"[0-9AB]){12}(?:" + _SEP + r"[0-9]" + _SEP + r"[0-9])?(?![0-9])"
)
# sex, year, month (01-12, or the 20-42 / 50-99 codes of an unknown month), département (never 00; 2A/2B), commune
# and order. Département 00 does not exist: it keeps 13-digit codes such as SNOMED's 1231000119100 out.
_NIR13 = re.compile(r"^[12][0-9]{2}(?:0[1-9]|1[0-2]|[2-3][0-9]|4[0-2]|[5-9][0-9])(?:0[1-9]|[1-9][0-9]|2A|2B)[0-9]{6}$")


def _is_nir(candidate: str) -> bool:
    compact = re.sub(r"[ .\-]", "", candidate)
    if len(compact) == 15:
        return nir_is_valid(compact)
    return len(compact) == 13 and bool(_NIR13.match(compact))  # without its key: the structure is enough


CODE_MAX_LENGTH = 255  # OMOP source values are varchar(50): anything much longer is free text, not a code


def looks_like_identifier(value: str) -> bool:
    """An e-mail address, a French phone number or a NIR (with a valid key, or its 13 characters without key;
    any separators) inside a coded value (a misfiled identifier);
    a value too long to be a code counts as one (it is free text, and scanning it would cost too much)."""
    if len(value) > CODE_MAX_LENGTH:
        return True
    if ("@" in value and _EMAIL.search(value)) or _PHONE.search(value):
        return True
    return any(_is_nir(m.group(0)) for m in _NIR_CANDIDATE.finditer(value.upper()))


class Detector:
    """What the hospital's scrubber looks for in a coded value besides NIRs, phones and e-mails: every surname of
    its identity table whatever its length, as whole tokens (`core.textmatch`), and its patient numbers (IPP)
    in the formats configured for the base (`ipp_formats` in config/network.yaml), each as a whole token."""

    def __init__(self, surnames: Iterable[str] = (), ipp_formats: Iterable[str] = ()):
        self.names = NameMatcher(surnames)
        formats = list(ipp_formats)
        self.ipp = (
            re.compile(r"(?<![0-9A-Za-z])(?:" + "|".join(f"(?:{f})" for f in formats) + r")(?![0-9A-Za-z])")
            if formats
            else None
        )

    def __call__(self, value: str) -> bool:
        if looks_like_identifier(value):
            return True
        if self.ipp is not None and self.ipp.search(value):
            return True
        return bool(len(self.names)) and self.names.found_in(value)


NO_NAMES = Detector()


def scrub_identifiers(col: pa.Array, detector: Detector = NO_NAMES) -> pa.Array:
    """Null the values of an allowed text column that carry an identifier; checked once per distinct value."""
    if len(col) == 0 or col.null_count == len(col):
        return col
    bad = [v for v in pc.unique(col).to_pylist() if v is not None and detector(v)]
    if not bad:
        return col
    mask = pc.fill_null(pc.is_in(col, value_set=pa.array(bad, col.type)), False)
    return pc.if_else(mask, pa.nulls(len(col), col.type), col)


def rekey_ids(col: pa.Array, persons: PersonMap, *, table: str, column: str) -> pa.Array:
    """Level-1 row ids of a local id column (see the module doc); ids must be in [0, 10**12) as before."""
    if len(col) and (pc.min(col).as_py() or 0) < 0:
        raise EdsError("ids must be non-negative", table=table, column=column)
    return rowids.rekey(col, persons.row_key, "level1-row")


def namespace_ids(col: pa.Array, site_number: int, *, table: str, column: str) -> pa.Array:
    if len(col) == 0:
        return col
    mx = pc.max(col).as_py()
    mn = pc.min(col).as_py()
    if mx is not None and (mx >= ID_NAMESPACE or mn < 0):
        raise EdsError(f"ids must be in [0, {ID_NAMESPACE}) to be namespaced by site", table=table, column=column)
    return pc.add(col, pa.scalar(site_number * ID_NAMESPACE, pa.int64()))


def level1_batch(
    batch: pa.Table,
    table: str,
    persons: PersonMap,
    site_number: int,
    *,
    allow_text: frozenset[str] = DEFAULT_TEXT_ALLOW_LIST,
    keep_birth_month: bool = False,
    detector: Detector = NO_NAMES,
) -> pa.Table:
    """Pseudonymise one extracted batch for the platform: ids replaced, identifiers removed or generalised,
    event dates shifted when the platform's policy asks for it."""
    spec = omop.table(table)
    allow_text = frozenset(allow_text) - NEVER_ALLOWED_TEXT
    person_dropped = [c for c in PERSON_DROPPED if not (keep_birth_month and c == "month_of_birth")]
    offsets = None
    if persons.date_shift_days and "person_id" in batch.column_names:
        offsets = persons.shift_days(batch.column("person_id").combine_chunks())
    cols: dict[str, pa.Array] = {}
    for name in batch.column_names:
        col = batch.column(name).combine_chunks()
        c = spec.column(name) if spec.has(name) else None
        if c is None:
            continue  # not an OMOP column: never forwarded
        if name == "person_id":
            col = persons.map_ids(col)
        elif table == "person" and name in person_dropped:
            col = pa.nulls(len(col), type=col.type)
        elif table == "location" and name in LOCATION_DROPPED:
            col = pa.nulls(len(col), type=col.type)
        elif table == "location" and name == "zip":
            col = generalise_postcode(col)
        elif c.is_id:
            rekeyed = rekey_ids(col, persons, table=table, column=name)
            if name == spec.primary_key:
                rowids.check_no_collision(col, rekeyed, table=table, column=name)
            col = rekeyed
        elif pa.types.is_string(col.type) and name not in allow_text:
            col = pa.nulls(len(col), type=col.type)
        elif offsets is not None and is_date_type(col.type):
            col = shift_dates(col, offsets)
        elif pa.types.is_string(col.type):
            col = scrub_identifiers(col, detector)  # a coded value may still hold a misfiled identifier
        cols[name] = col
    if table == "person":
        local_ids = batch.column("person_id").combine_chunks()
        cols[TOKEN_COLUMN] = persons.sealed_tokens(local_ids)
        cols[digests.DIGEST_COLUMN] = persons.digests(local_ids)
    return pa.table(cols)
