"""Demo and test source databases of the hospitals: OMOP tables plus synthetic identities.

A real hospital EDS holds identities (IPP, NIR, names, address) that never leave it. The seed gives
every demo hospital such an identity table, with realistic-looking synthetic values, so that
pseudonymisation and linkage are exercised on identifiers shaped like the real ones:

- `plan_identities(network)` plans, from the configuration alone, who is treated where. Patients shared
  between bases (`seed.shared_with` / `seed.shared_fraction`) are the same people (same NIR, names,
  birth date, sex); some patients have no NIR or an NIR with a wrong key (site-scoped fallback).
- `ground_truth(network)` derives what linkage must find: keys per base, objectors, overlap matrix.
- `seed_base(dsn, network, base_id, stamp)` creates one hospital's source database: schemas `omop`
  (clinical tables with the change column `_updated_at`, update/delete triggers, `omop._deleted`)
  and `identity` (`patient`, `opposition`), filled from the Synthea27Nj sample or generated.
- `load_vocabulary(conn, zip_path)` loads the sample's vocabulary subset (for 'Maps to').

Everything is deterministic. Logs carry counts only, never an identity value.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from eds_network.core import omop
from eds_network.core.config import REPO_ROOT, LocalBase, Network
from eds_network.core.errors import ConfigError, SourceError
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401

log = logging.getLogger(__name__)

SOURCE_SCHEMA = "omop"
IDENTITY_SCHEMA = "identity"
DELETED_TABLE = "_deleted"
SYNTHEA_ZIP_ENV = "EDS_SYNTHEA_ZIP"

# Share of generated (non-shared) patients without an NIR, and with an NIR whose key is wrong.
NO_NIR_RATE = 0.08
BAD_KEY_RATE = 0.02
# Multiplies the Synthea27Nj per-person volumes in `generate` (1.0 = the sample's ratios).
VOLUME_SCALE = 1.0
# Persons per generation block: one block of MEASUREMENT is ~100k rows at the sample's ratios.
BLOCK_PERSONS = 256
# Generated clinical history ends here (observation periods, visits, deaths).
HISTORY_END = dt.date(2025, 12, 31)

GENDER_CONCEPT = {"M": 8507, "F": 8532}
_CONCEPT_GENDER = {v: k for k, v in GENDER_CONCEPT.items()}


# ---------------------------------------------------------------------------------------------------
# NIR (numéro d'inscription au répertoire, "numéro de sécurité sociale")
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A synthetic patient identity as a hospital EDS holds it (never leaves the site)."""

    nir: str | None
    last_name: str
    first_name: str
    birth_date: dt.date
    sex: str  # 'M' | 'F'
    postcode: str | None
    address: str | None
    city: str | None
    phone: str | None
    email: str | None

    @property
    def linkage_key(self) -> str | None:
        """`nir|birth_date|sex` for a valid NIR, else None (the patient gets a site-scoped identity)."""
        if not nir_is_valid(self.nir):
            return None
        return f"{self.nir}|{self.birth_date.isoformat()}|{self.sex}"

    def __repr__(self) -> str:  # never print an identity value, even by accident
        return "Identity(<redacted>)"

    __str__ = __repr__


_FIRST_F = (
    "Marie", "Hélène", "Chloé", "Léa", "Manon", "Camille", "Inès", "Zoé", "Émilie", "Françoise",
    "Geneviève", "Nathalie", "Isabelle", "Sophie", "Céline", "Aurélie", "Anaïs", "Maëlys", "Noémie",
    "Joséphine", "Fatima", "Aïcha", "Yasmine", "Marie-Hélène", "Anne-Sophie", "Bérénice", "Océane",
    "Solène", "Agnès", "Thi Mai", "Clémence", "Éloïse",
)  # fmt: skip
_FIRST_M = (
    "Jean", "Pierre", "Louis", "Lucas", "Hugo", "Théo", "Nathan", "Mathéo", "Raphaël", "Gaël", "Loïc",
    "Benoît", "François", "Jérôme", "Stéphane", "Sébastien", "Hervé", "Noël", "Mohamed", "Karim",
    "Youssef", "Mamadou", "Jean-Pierre", "Jean-François", "Pierre-Yves", "Étienne", "Frédéric", "Cédric",
    "Joël", "Thibault", "Anh Dung", "Grégoire",
)  # fmt: skip
_LAST = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
    "Simon", "Laurent", "Lefèvre", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent",
    "Fournier", "Morel", "Girard", "André", "Mercier", "Dupont", "Lambert", "Bonnet", "François",
    "Martinez", "Legrand", "Garnier", "Faure", "Rousseau", "Blanc", "Guérin", "Müller", "Henry",
    "Roussel", "Perrin", "Morin", "Mathieu", "Clément", "Gauthier", "Dumont", "Fontaine", "Chevalier",
    "N'Diaye", "Diallo", "Nguyen", "Benali", "Da Silva", "Le Goff", "Le Gall", "Saint-Martin",
    "de La Fontaine", "Bouvier-Lécuyer", "Hoarau", "Gonçalves", "Crépin", "Côté", "Hamidi", "Traoré",
)  # fmt: skip
# (postcode, city): real postcodes, Île-de-France first (the demo's regional platform).
_PLACES = (
    ("75011", "Paris"), ("75013", "Paris"), ("75015", "Paris"), ("75018", "Paris"), ("75020", "Paris"),
    ("92100", "Boulogne-Billancourt"), ("92000", "Nanterre"), ("93200", "Saint-Denis"),
    ("93100", "Montreuil"), ("94000", "Créteil"), ("94200", "Ivry-sur-Seine"), ("95000", "Cergy"),
    ("78000", "Versailles"), ("91000", "Évry-Courcouronnes"), ("77000", "Melun"),
    ("69003", "Lyon"), ("69100", "Villeurbanne"), ("13008", "Marseille"), ("31000", "Toulouse"),
    ("33000", "Bordeaux"), ("59000", "Lille"), ("67000", "Strasbourg"), ("44000", "Nantes"),
    ("35000", "Rennes"), ("06000", "Nice"), ("29200", "Brest"), ("76000", "Rouen"), ("38000", "Grenoble"),
    ("34000", "Montpellier"), ("21000", "Dijon"), ("87000", "Limoges"), ("63000", "Clermont-Ferrand"),
    ("45000", "Orléans"), ("51100", "Reims"), ("80000", "Amiens"), ("20000", "Ajaccio"),
    ("20200", "Bastia"), ("97400", "Saint-Denis"), ("97200", "Fort-de-France"),
)  # fmt: skip
_STREET_TYPES = ("rue", "rue", "avenue", "boulevard", "allée", "impasse", "place", "chemin", "quai")
_STREET_NAMES = (
    "de la République", "Victor Hugo", "Jean Jaurès", "des Lilas", "du Général de Gaulle", "Pasteur",
    "de l'Église", "des Écoles", "Émile Zola", "du Moulin", "de la Gare", "Voltaire", "des Peupliers",
    "Gambetta", "Jeanne d'Arc", "du Château", "Léon Blum", "de Verdun", "des Tilleuls", "Pierre Curie",
)  # fmt: skip
# INSEE country codes of persons born abroad (département 99 in the NIR).
_ABROAD = (350, 351, 352, 341, 127, 139, 134)
_MAIL_DOMAINS = ("courriel.example", "messagerie.example", "poste.example")


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(*parts: int | str) -> np.random.Generator:
    """A numpy Generator seeded from ints and strings (strings hashed with CRC-32, stable across runs)."""
    ent = [(_crc(p) if isinstance(p, str) else int(p)) % 2**63 for p in parts]
    return np.random.default_rng(ent)


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c for c in folded if c.isascii() and (c.isalnum() or c == "-")).lower()


def _dept_of_postcode(postcode: str) -> tuple[str, int | None]:
    """(NIR département, commune prefix) of a residence postcode (Corsica 2A/2B, overseas 97x)."""
    if postcode.startswith("20"):
        return ("2A" if postcode < "20200" else "2B"), None
    if postcode.startswith("97"):
        return "97", int(postcode[2])  # NIR: département 97, commune 3 digits starting with the 3rd digit
    return postcode[:2], None


@dataclass(frozen=True)
class _BasePlan:
    base_id: str
    identities: tuple[Identity, ...]
    person_ids: tuple[int, ...]
    shared_in: frozenset[int]  # positions holding patients copied from another base
    objectors: tuple[int, ...]  # positions, sorted
    pick_pool: tuple[int, ...]  # positions other bases may copy: own, valid NIR, not objector
    shared_counts: dict[str, int] = field(default_factory=dict)


def _new_identities(
    rng: np.random.Generator,
    n: int,
    used_nir13: set[str],
    births: Sequence[tuple[dt.date, str]] | None = None,
) -> list[Identity]:
    """`n` fresh identities with valid NIRs unique across `used_nir13` (births: fixed (date, sex) each)."""
    if births is None:
        sex_f = rng.random(n) < 0.52
        first_day = dt.date(1930, 1, 1).toordinal()
        days = rng.integers(0, dt.date(2024, 12, 31).toordinal() - first_day + 1, n)
        births = [
            (dt.date.fromordinal(first_day + int(d)), "F" if f else "M") for d, f in zip(days, sex_f, strict=True)
        ]
    first_i = rng.integers(0, 1 << 30, n)
    last_i = rng.integers(0, len(_LAST), n)
    upper = rng.random(n) < 0.25
    place_i = rng.integers(0, len(_PLACES), n)
    street_no = rng.integers(1, 181, n)
    street_t = rng.integers(0, len(_STREET_TYPES), n)
    street_n = rng.integers(0, len(_STREET_NAMES), n)
    birth_place = rng.random(n)  # < 0.70 residence département, < 0.94 elsewhere in France, else abroad
    other_place = rng.integers(0, len(_PLACES), n)
    abroad = rng.integers(0, len(_ABROAD), n)
    commune = rng.integers(1, 600, n)
    order = rng.integers(1, 1000, n)
    phone = rng.integers(0, 100_000_000, n)
    phone_fmt = rng.random(n)  # < 0.1 no phone, < 0.6 spaced, else compact
    mail = rng.random(n)  # < 0.35 no e-mail
    mail_no = rng.integers(1, 100, n)
    mail_dom = rng.integers(0, len(_MAIL_DOMAINS), n)
    out = []
    for i in range(n):
        birth, sex = births[i]
        firsts = _FIRST_F if sex == "F" else _FIRST_M
        first = firsts[int(first_i[i]) % len(firsts)]
        last = _LAST[int(last_i[i])]
        postcode, city = _PLACES[int(place_i[i])]
        if birth_place[i] < 0.70:
            dept, prefix = _dept_of_postcode(postcode)
        elif birth_place[i] < 0.94:
            dept, prefix = _dept_of_postcode(_PLACES[int(other_place[i])][0])
        else:
            dept, prefix = "99", None
        if dept == "99":
            com = _ABROAD[int(abroad[i])]
        elif prefix is not None:
            com = prefix * 100 + int(commune[i]) % 50 + 1
        else:
            com = int(commune[i])
        ordno = int(order[i])
        nir = make_nir(sex, birth, dept, com, ordno)
        while nir[:13] in used_nir13:  # keep NIRs unique across the whole network
            ordno = ordno % 999 + 1
            nir = make_nir(sex, birth, dept, com, ordno)
        used_nir13.add(nir[:13])
        digits = f"{int(phone[i]):08d}"
        if phone_fmt[i] < 0.1:
            tel = None
        elif phone_fmt[i] < 0.6:
            tel = "06 " + " ".join(digits[j : j + 2] for j in range(0, 8, 2))
        else:
            tel = "06" + digits
        email = None
        if mail[i] >= 0.35:
            email = f"{_ascii(first)}.{_ascii(last)}{int(mail_no[i])}@{_MAIL_DOMAINS[int(mail_dom[i])]}"
        out.append(
            Identity(
                nir=nir,
                last_name=last.upper() if upper[i] else last,
                first_name=first,
                birth_date=birth,
                sex=sex,
                postcode=postcode,
                address=f"{int(street_no[i])} {_STREET_TYPES[int(street_t[i])]} {_STREET_NAMES[int(street_n[i])]}",
                city=city,
                phone=tel,
                email=email,
            )
        )
    return out


def _wrong_key(nir: str, rng: np.random.Generator) -> str:
    key = int(nir[13:])
    bad = (key + int(rng.integers(1, 100))) % 100
    return f"{nir[:13]}{bad:02d}"


def _shared_order(network: Network) -> list[LocalBase]:
    """Bases ordered so that a base comes after every base it copies patients from."""
    bases = {b.id: b for b in network.local_bases}
    out: list[LocalBase] = []
    state: dict[str, int] = {}

    def visit(bid: str, path: list[str]) -> None:
        if state.get(bid) == 2:
            return
        if state.get(bid) == 1:
            cycle = " -> ".join([*path[path.index(bid) :], bid])
            raise ConfigError(f"seed.shared_with forms a cycle: {cycle}", base=bid)
        state[bid] = 1
        for other in bases[bid].seed.shared_with:
            if other != bid:
                visit(other, [*path, bid])
        state[bid] = 2
        out.append(bases[bid])

    for b in network.local_bases:
        visit(b.id, [])
    return out


_PLAN_CACHE: dict[tuple[str, str], dict[str, _BasePlan]] = {}


def _plan(network: Network) -> dict[str, _BasePlan]:
    needs_zip = any(b.seed.source == "synthea27nj" for b in network.local_bases)
    zip_path = synthea_zip_path() if needs_zip else None
    key = (network.model_dump_json(), str(zip_path or ""))
    if key not in _PLAN_CACHE:
        if len(_PLAN_CACHE) > 16:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = _compute_plan(network, zip_path)
    return _PLAN_CACHE[key]


def _compute_plan(network: Network, zip_path: Path | None) -> dict[str, _BasePlan]:
    plans: dict[str, _BasePlan] = {}
    used_nir13: set[str] = set()
    for base in _shared_order(network):
        spec = base.seed
        rng = _rng(spec.seed, base.id, "identities")
        births: list[tuple[dt.date, str]] | None = None
        if spec.source == "synthea27nj":
            assert zip_path is not None
            persons = _synthea_persons(zip_path)
            if spec.shared_with:
                raise ConfigError(
                    "a synthea27nj base keeps the sample's birth dates: it cannot copy patients from another "
                    "base; put shared_with on the generated base instead",
                    base=base.id,
                )
            n = len(persons)
            person_ids = tuple(p[0] for p in persons)
            births = [(p[1], p[2]) for p in persons]
        else:
            n = spec.patients
            person_ids = tuple(range(1, n + 1))

        # Patients copied from other bases (their own, valid-NIR, non-objector patients).
        copied: list[Identity] = []
        shared_counts: dict[str, int] = {}
        for other in dict.fromkeys(spec.shared_with):
            if other == base.id:
                continue
            pool = plans[other].pick_pool
            want = round(spec.shared_fraction * n)
            take = min(want, len(pool), n - len(copied))
            if take < want:
                log.warning(
                    "base %s: %d shared patients with %s requested, %d available: sharing %d",
                    base.id, want, other, len(pool), take,
                )  # fmt: skip
            picks = _rng(spec.seed, base.id, other, "share").choice(
                np.asarray(pool, dtype=np.int64), take, replace=False
            )
            copied.extend(plans[other].identities[int(p)] for p in picks)
            shared_counts[other] = take

        n_own = n - len(copied)
        own = _new_identities(rng, n_own, used_nir13, births)
        # Some own patients have no NIR or an NIR with a wrong key.
        n_none = round(NO_NIR_RATE * n_own)
        n_bad = round(BAD_KEY_RATE * n_own)
        chosen = rng.permutation(n_own)
        for j in chosen[:n_none]:
            own[int(j)] = replace(own[int(j)], nir=None)
        for j in chosen[n_none : n_none + n_bad]:
            own[int(j)] = replace(own[int(j)], nir=_wrong_key(own[int(j)].nir or "", rng))

        # Place the copies at random positions (the synthea base has none: positions follow PERSON.csv).
        if copied:
            perm = rng.permutation(n)
            shared_pos = np.sort(perm[: len(copied)])
            own_pos = np.sort(perm[len(copied) :])
        else:
            shared_pos = np.empty(0, dtype=np.int64)
            own_pos = np.arange(n)
        slots: list[Identity | None] = [None] * n
        for p, ident in zip(shared_pos, copied, strict=True):
            slots[int(p)] = ident
        for p, ident in zip(own_pos, own, strict=True):
            slots[int(p)] = ident
        identities = tuple(s for s in slots if s is not None)
        assert len(identities) == n

        k = min(spec.objectors, n_own)
        objectors = tuple(sorted(int(p) for p in rng.choice(own_pos, k, replace=False))) if k else ()
        obj = set(objectors)
        pool = tuple(int(p) for p in own_pos if int(p) not in obj and nir_is_valid(identities[int(p)].nir))
        plans[base.id] = _BasePlan(
            base_id=base.id,
            identities=identities,
            person_ids=person_ids,
            shared_in=frozenset(int(p) for p in shared_pos),
            objectors=objectors,
            pick_pool=pool,
            shared_counts=shared_counts,
        )
        log.info(
            "base %s: %d identities planned (%d shared, %d without NIR, %d wrong key, %d objectors)",
            base.id, n, len(copied), n_none, n_bad, k,
        )  # fmt: skip
    return {b.id: plans[b.id] for b in network.local_bases}


def plan_identities(network: Network) -> dict[str, list[Identity]]:
    """Identities of every base's patients, in person order (position i <-> i-th person_id).

    Deterministic from the configuration (seed values) and, for the synthea27nj base, PERSON.csv of
    the sample (birth dates and sex come from there).
    """
    return {bid: list(p.identities) for bid, p in _plan(network).items()}


def planned_person_ids(network: Network) -> dict[str, list[int]]:
    """Local person_id of each planned identity (generated bases: 1..N; synthea: PERSON.csv order)."""
    return {bid: list(p.person_ids) for bid, p in _plan(network).items()}


def planned_objectors(network: Network) -> dict[str, list[int]]:
    """Local person_ids of each base's objectors (opposition registry)."""
    return {bid: [p.person_ids[i] for i in p.objectors] for bid, p in _plan(network).items()}


def ground_truth(network: Network) -> dict:
    """What linkage must find, for tests.

    {"bases": {base_id: {
        "persons": N,
        "linkage_keys": sorted `nir|birth_date|sex` of valid-NIR patients who are not objectors
                        (what leaves the site),
        "all_linkage_keys": the same including objectors,
        "objectors": sorted local person_ids in identity.opposition,
        "fallback_person_ids": sorted person_ids without a valid NIR (site-scoped identity), objectors excluded,
        "shared_with": {other_base: number of patients copied from it},
     }},
     "overlap": {base_a: {base_b: persons with the same valid NIR+birth date+sex at both}}}
    Objectors are never shared, so the overlap is the same with or without them; the diagonal is
    the number of distinct published keys of the base.
    """
    plans = _plan(network)
    bases: dict[str, dict] = {}
    key_sets: dict[str, set[str]] = {}
    for bid, p in plans.items():
        obj = set(p.objectors)
        keys, all_keys, fallback = [], [], []
        for i, ident in enumerate(p.identities):
            k = ident.linkage_key
            if k is not None:
                all_keys.append(k)
                if i not in obj:
                    keys.append(k)
            elif i not in obj:
                fallback.append(p.person_ids[i])
        key_sets[bid] = set(keys)
        bases[bid] = {
            "persons": len(p.identities),
            "linkage_keys": sorted(keys),
            "all_linkage_keys": sorted(all_keys),
            "objectors": sorted(p.person_ids[i] for i in p.objectors),
            "fallback_person_ids": sorted(fallback),
            "shared_with": dict(p.shared_counts),
        }
    overlap = {a: {b: len(key_sets[a] & key_sets[b]) for b in plans} for a in plans}
    return {"bases": bases, "overlap": overlap}


# ---------------------------------------------------------------------------------------------------
# Source schema
# ---------------------------------------------------------------------------------------------------


def _sql_file(name: str) -> str:
    return resources.files("eds_network.dev").joinpath(f"sql/seed/{name}").read_text(encoding="utf-8")


def _delete_key(t: omop.Table) -> str | None:
    """Column recorded in omop._deleted: the primary key, else person_id (DEATH), else nothing."""
    if t.primary_key:
        return t.primary_key
    return "person_id" if t.has("person_id") else None


def create_source_schema(conn: psycopg.Connection, tables: Sequence[str]) -> None:
    """(Re)create schemas `omop` and `identity` of a hospital source database. Does not commit."""
    with conn.cursor() as cur:
        cur.execute(_sql_file("source_schema.sql"))
        for name in tables:
            t = omop.table(name)
            cols = []
            for c in t.columns:
                if not SQL_TYPE.match(c.sql_type):
                    raise ValueError(f"unexpected SQL type {c.sql_type!r} for {t.name}.{c.name}")
                cols.append(
                    sql.SQL("{} {}{}").format(
                        sql.Identifier(c.name), sql.SQL(c.sql_type), sql.SQL(" NOT NULL" if c.required else "")
                    )
                )
            cols.append(sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(omop.CHANGE_COLUMN)))
            if t.primary_key:
                cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(t.primary_key)))
            qname = sql.Identifier(SOURCE_SCHEMA, t.name)
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(qname, sql.SQL(", ").join(cols)))
            cur.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(f"{t.name}__updated_at_idx"), qname, sql.Identifier(omop.CHANGE_COLUMN)
                )
            )
            cur.execute(
                sql.SQL("CREATE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                    sql.Identifier(f"{t.name}_touch_updated_at"),
                    qname,
                    sql.Identifier(SOURCE_SCHEMA, "_touch_updated_at"),
                )
            )
            key = _delete_key(t)
            cur.execute(
                sql.SQL("CREATE TRIGGER {} AFTER DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}({})").format(
                    sql.Identifier(f"{t.name}_record_delete"),
                    qname,
                    sql.Identifier(SOURCE_SCHEMA, "_record_delete"),
                    sql.Literal(key) if key else sql.SQL(""),
                )
            )
    log.info("source schema created: %d omop tables", len(tables))


# ---------------------------------------------------------------------------------------------------
# Zip / CSV / COPY helpers
# ---------------------------------------------------------------------------------------------------


def synthea_zip_path() -> Path:
    """$EDS_SYNTHEA_ZIP, else <repo>/../shared/datasets/synthea27nj/Synthea27Nj_5.4.zip."""
    env = os.environ.get(SYNTHEA_ZIP_ENV)
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "datasets" / "synthea27nj" / "Synthea27Nj_5.4.zip"
    if not path.is_file():
        raise SourceError(
            f"Synthea27Nj sample not found at {path} (set ${SYNTHEA_ZIP_ENV} to the Synthea27Nj_5.4.zip file)"
        )
    return path


@cache
def _synthea_persons_cached(zip_path: str, mtime: float) -> tuple[tuple[int, dt.date, str], ...]:
    t = read_zip_csv(Path(zip_path), "person", typed=True)
    if t is None:
        raise SourceError(f"{zip_path}: PERSON.csv not found", table="person")
    rows = []
    for pid, g, y, m, d in zip(
        *(
            t.column(c).to_pylist()
            for c in ("person_id", "gender_concept_id", "year_of_birth", "month_of_birth", "day_of_birth")
        ),
        strict=True,
    ):
        rows.append((int(pid), dt.date(int(y), int(m or 1), int(d or 1)), _CONCEPT_GENDER.get(int(g), "F")))
    return tuple(sorted(rows))


def _synthea_persons(zip_path: Path) -> tuple[tuple[int, dt.date, str], ...]:
    """(person_id, birth date, sex) of the sample's persons, by person_id."""
    p = Path(zip_path).resolve()
    return _synthea_persons_cached(str(p), p.stat().st_mtime)


@contextmanager
def _indexes_deferred(cur: psycopg.Cursor, schema: str, table: str) -> Iterator[None]:
    """Drop the table's indexes (primary key included) for a bulk load, and rebuild them afterwards."""
    cur.execute(
        """
        SELECT con.conname, pg_get_constraintdef(con.oid)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND con.contype IN ('p', 'u')
        """,
        (schema, table),
    )
    constraints = cur.fetchall()
    cur.execute(
        """
        SELECT ci.relname, pg_get_indexdef(ix.indexrelid)
          FROM pg_index ix
          JOIN pg_class c ON c.oid = ix.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class ci ON ci.oid = ix.indexrelid
         WHERE n.nspname = %s AND c.relname = %s
           AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid)
        """,
        (schema, table),
    )
    indexes = cur.fetchall()
    qname = sql.Identifier(schema, table)
    for name, _ in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
    for name, _ in constraints:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(qname, sql.Identifier(name)))
    yield
    for name, definition in constraints:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(qname, sql.Identifier(name), sql.SQL(definition))
        )
    for _, definition in indexes:
        cur.execute(sql.SQL(definition))


def _stamps(rng: np.random.Generator, n: int, stamp: tuple[dt.datetime, dt.datetime]) -> pa.Array:
    """`n` change timestamps spread uniformly (and deterministically) over [stamp[0], stamp[1])."""
    lo, hi = (_aware(s) for s in stamp)
    span = (hi - lo) // dt.timedelta(microseconds=1)
    if span <= 0:
        raise ValueError("stamp range is empty: stamp[1] must be after stamp[0]")
    lo_us = (lo - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    utc = pa.array(lo_us + rng.integers(0, span, n), pa.timestamp("us"))
    # As text with an explicit UTC offset: Arrow's CSV writer is slow on zoned timestamps.
    return pc.binary_join_element_wise(pc.cast(utc, pa.string()), "+00", "")


def _aware(d: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC."""
    return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d


# ---------------------------------------------------------------------------------------------------
# Identity registry and opposition
# ---------------------------------------------------------------------------------------------------


def _ipp(site_number: int, person_ids: Sequence[int], salt: int) -> list[str]:
    """Site-specific patient number: 2-digit site + 8 digits (a bijection of person_id, not equal to it)."""
    offset = salt % 10**8
    return [f"{site_number:02d}{(pid * 7919 + offset) % 10**8:08d}" for pid in person_ids]


def _insert_identities(
    conn: psycopg.Connection, identities: Sequence[Identity], person_ids: Sequence[int], site_number: int, salt: int
) -> int:
    cols = ("person_id", "ipp", "nir", "last_name", "first_name", "birth_date", "sex", "postcode", "address", "city", "phone", "email")  # fmt: skip
    with conn.cursor() as cur:
        with cur.copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(IDENTITY_SCHEMA, "patient"), sql.SQL(", ").join(map(sql.Identifier, cols))
            )
        ) as cp:
            for pid, ipp, ident in zip(person_ids, _ipp(site_number, person_ids, salt), identities, strict=True):
                cp.write_row(
                    (pid, ipp, ident.nir, ident.last_name, ident.first_name, ident.birth_date, ident.sex,
                     ident.postcode, ident.address, ident.city, ident.phone, ident.email)
                )  # fmt: skip
    return len(identities)


def register_objectors(
    conn: psycopg.Connection, person_ids: Sequence[int], stamp: tuple[dt.datetime, dt.datetime]
) -> int:
    """Put patients in identity.opposition, recorded (deterministically) before the stamp range."""
    start = _aware(stamp[0])
    channels = ("courrier", "courrier", "formulaire_web", "consultation")
    rows = [
        (pid, start - dt.timedelta(days=3 * (i + 1), hours=i % 7, minutes=11 * i % 60), channels[i % len(channels)])
        for i, pid in enumerate(sorted(person_ids))
    ]
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} (person_id, recorded_at, channel) VALUES (%s, %s, %s)").format(
                sql.Identifier(IDENTITY_SCHEMA, "opposition")
            ),
            rows,
        )
    log.info("opposition registry: %d objectors", len(rows))
    return len(rows)


# ---------------------------------------------------------------------------------------------------
# Synthea27Nj sample
# ---------------------------------------------------------------------------------------------------


def load_synthea(
    conn: psycopg.Connection,
    zip_path: Path,
    tables: Sequence[str],
    identities: Sequence[Identity],
    stamp: tuple[dt.datetime, dt.datetime],
    *,
    site_number: int = 1,
) -> dict[str, int]:
    """Load the Synthea27Nj sample (read in place from the zip) into omop.<table>, fill identity.patient.

    `identities` are the planned identities of this base, in person_id order (birth date and sex must
    match PERSON.csv). Every row's `_updated_at` is spread deterministically over [stamp[0], stamp[1]).
    Does not commit. Returns rows per table.
    """
    zip_path = Path(zip_path)
    persons = _synthea_persons(zip_path)
    if len(identities) != len(persons):
        raise ValueError(f"{len(identities)} identities for {len(persons)} persons in the Synthea sample")
    for (_, birth, sex), ident in zip(persons, identities, strict=True):
        if ident.birth_date != birth or ident.sex != sex:
            raise ValueError("identities do not match PERSON.csv (birth date / sex): plan them with plan_identities")
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for name in tables:
            tdef = omop.table(name)
            data = read_zip_csv(zip_path, name, typed=False, tdef=tdef)
            if data is None:
                counts[name] = 0
                continue
            data = data.append_column(
                omop.CHANGE_COLUMN, _stamps(_rng(name, "synthea", data.num_rows), data.num_rows, stamp)
            )
            chunks = (pa.Table.from_batches([rb]) for rb in data.to_batches(max_chunksize=100_000))
            counts[name] = copy_tables(cur, SOURCE_SCHEMA, tdef.name, chunks)
            log.info("synthea %s: %d rows", name, counts[name])
    _insert_identities(conn, identities, [p[0] for p in persons], site_number, salt=_crc(f"synthea{site_number}"))
    return counts


# ---------------------------------------------------------------------------------------------------
# Generated bases
# ---------------------------------------------------------------------------------------------------

# Event date column of each table (others: the first date column of the table).
_ANCHOR = {
    "visit_occurrence": "visit_start_date",
    "visit_detail": "visit_detail_start_date",
    "condition_occurrence": "condition_start_date",
    "drug_exposure": "drug_exposure_start_date",
    "procedure_occurrence": "procedure_date",
    "device_exposure": "device_exposure_start_date",
    "measurement": "measurement_date",
    "observation": "observation_date",
    "specimen": "specimen_date",
}
# Columns generated per row instead of sampled from the Synthea templates.
_UUID_COLUMNS = {"visit_source_value", "visit_detail_source_value", "person_source_value"}
_SKIP_COLUMNS = {"measurement_time"}
_JITTER_TABLES = {"measurement", "observation"}
_DAY = np.timedelta64(1, "D")


@dataclass
class _Template:
    """Rows of one Synthea table, sampled jointly so that concepts, units and source values stay coherent."""

    table: pa.Table
    anchor: str | None
    offsets: dict[str, tuple[np.ndarray, np.ndarray]]  # date column -> (days after anchor, valid mask)

    @property
    def n(self) -> int:
        return self.table.num_rows


def _dates(arr: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(arr.type):
        return arr.to_numpy().astype("datetime64[D]")
    return arr.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")


def _is_day(c: omop.Column) -> bool:
    """A day-level event date: `date` columns, and the `datetime`-typed `*_date` columns (eras)."""
    d = c.datatype.lower()
    return d == "date" or (d == "datetime" and c.name.endswith("_date"))


@cache
def _template_cached(zip_path: str, mtime: float, table: str) -> _Template | None:
    tdef = omop.table(table)
    data = read_zip_csv(Path(zip_path), table, typed=True, tdef=tdef)
    if data is None or data.num_rows == 0:
        return None
    date_cols = [c.name for c in tdef.columns if _is_day(c) and c.name in data.column_names]
    starts = [c for c in date_cols if "start" in c]
    anchor = _ANCHOR.get(table) or (starts or date_cols or [None])[0]
    offsets = {}
    if anchor and anchor in data.column_names:
        a = _dates(data.column(anchor))
        for c in date_cols:
            if c == anchor:
                continue
            d = _dates(data.column(c))
            valid = ~np.isnat(d) & ~np.isnat(a)
            off = np.where(valid, (np.where(valid, d, a) - a) // _DAY, 0).astype(np.int64)
            offsets[c] = (np.maximum(off, 0), valid)
    return _Template(data, anchor, offsets)


def _template(zip_path: Path, table: str) -> _Template | None:
    p = Path(zip_path).resolve()
    return _template_cached(str(p), p.stat().st_mtime, table)


def _uuids(rng: np.random.Generator, n: int) -> pa.Array:
    """UUID-looking strings (8-4-4-4-12 lower-case hex), vectorised."""
    hexdig = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nib = hexdig[rng.integers(0, 16, (n, 32), dtype=np.uint8)]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    pos = [i for i in range(36) if i not in (8, 13, 18, 23)]
    out[:, pos] = nib
    return pa.array(np.ascontiguousarray(out).view("S36").ravel()).cast(pa.string())


def _date_array(d: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(d.astype("datetime64[D]"), pa.date32(), mask=mask)


def _ts_array(d: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(d.astype("datetime64[us]"), pa.timestamp("us"), mask=mask)


@dataclass
class _People:
    """Person-level arrays of a generated base (index i <-> person_id i + 1)."""

    birth: np.ndarray  # datetime64[D]
    sex: np.ndarray  # 'M'/'F'
    obs_start: np.ndarray
    obs_end: np.ndarray
    dead: np.ndarray  # bool
    nvisits: np.ndarray  # int64
    visit_offset: np.ndarray  # int64, len N+1 (exclusive cumsum)


def _people(seed: int, base_id: str, identities: Sequence[Identity], visits_per_person: float) -> _People:
    rng = _rng(seed, base_id, "people")
    n = len(identities)
    birth = np.array([i.birth_date for i in identities], dtype="datetime64[D]")
    sex = np.array([i.sex for i in identities])
    end = np.datetime64(HISTORY_END, "D")
    birth_c = np.minimum(birth, end)
    lookback = (rng.uniform(1.0, 25.0, n) * 365.25).astype(np.int64) * _DAY
    obs_start = np.maximum(birth_c, end - lookback)
    age = (end - birth_c) / _DAY / 365.25
    p_death = 0.01 + np.clip((age - 40.0) / 50.0, 0.0, 1.0) ** 2
    p_death = np.minimum(p_death * (0.10 / p_death.mean()), 0.9) if n else p_death
    dead = rng.random(n) < p_death
    span = (end - obs_start) // _DAY
    death = obs_start + (span * rng.uniform(0.2, 1.0, n)).astype(np.int64) * _DAY
    obs_end = np.where(dead, death, end)
    years = ((obs_end - obs_start) / _DAY) / 365.25 + 0.25
    activity = rng.gamma(2.0, 0.5, n)
    mean_v = visits_per_person * VOLUME_SCALE * years / (years.mean() if n else 1.0) * activity
    nvisits = 1 + rng.poisson(np.maximum(mean_v - 1.0, 0.0))
    offset = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nvisits, out=offset[1:])
    return _People(birth, sex, obs_start, obs_end, dead, nvisits.astype(np.int64), offset)


@dataclass
class _Visits:
    person: np.ndarray  # local person index (0-based, in the whole base)
    start: np.ndarray
    end: np.ndarray
    ids: np.ndarray
    tpl_idx: np.ndarray
    preceding: np.ndarray  # id of the person's previous visit, 0 = none


def _block_visits(seed: int, base_id: str, people: _People, tpl: _Template, b: int, p0: int, p1: int) -> _Visits:
    """Visits of persons [p0, p1): regenerated identically for every table that needs them."""
    rng = _rng(seed, base_id, "visits", b)
    nv = people.nvisits[p0:p1]
    person = np.repeat(np.arange(p0, p1), nv)
    start0 = people.obs_start[person]
    width = (people.obs_end[person] - start0) // _DAY + 1
    start = start0 + (rng.random(person.size) * width).astype(np.int64) * _DAY
    tpl_idx = rng.integers(0, tpl.n, person.size)
    order = np.lexsort((tpl_idx, start, person))
    person, start, tpl_idx = person[order], start[order], tpl_idx[order]
    off, valid = tpl.offsets.get("visit_end_date", (np.zeros(tpl.n, np.int64), np.ones(tpl.n, bool)))
    end = np.minimum(start + np.where(valid[tpl_idx], off[tpl_idx], 0) * _DAY, people.obs_end[person])
    ids = people.visit_offset[p0] + np.arange(1, person.size + 1, dtype=np.int64)
    preceding = np.zeros(person.size, dtype=np.int64)
    if person.size > 1:
        same = person[1:] == person[:-1]
        preceding[1:] = np.where(same, ids[:-1], 0)
    return _Visits(person, start, end, ids, tpl_idx, preceding)


def _jitter(values: pa.Array, rng: np.random.Generator) -> pa.Array:
    """Perturb sampled lab values a little (integers stay integers, others keep one decimal)."""
    v = values.to_numpy(zero_copy_only=False).astype(np.float64)
    mask = np.isnan(v)
    f = np.exp(rng.normal(0.0, 0.08, v.size))
    integral = np.equal(np.mod(np.nan_to_num(v), 1.0), 0.0)
    out = np.where(integral, np.round(v * f), np.round(v * f, 1))
    return pa.array(np.where(mask, 0.0, out), pa.float64(), mask=mask)


def _event_chunk(
    tdef: omop.Table,
    tpl: _Template,
    rng: np.random.Generator,
    ids: np.ndarray,
    person: np.ndarray,
    anchor: np.ndarray,
    obs_end: np.ndarray,
    visit_ids: np.ndarray | None,
    idx: np.ndarray | None = None,
) -> dict[str, pa.Array]:
    """Columns of one chunk of a generated event table: template rows `idx` (default: sampled) re-dated on `anchor`."""
    if idx is None:
        idx = rng.integers(0, tpl.n, ids.size)
    idx_pa = pa.array(idx)
    cols: dict[str, pa.Array] = {}
    dates: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for c in tdef.columns:
        name = c.name
        dtype = c.datatype.lower()
        if name == tdef.primary_key:
            cols[name] = pa.array(ids)
        elif name == "person_id":
            cols[name] = pa.array(person + 1)
        elif name == "visit_occurrence_id" and visit_ids is not None:
            cols[name] = pa.array(visit_ids)
        elif c.is_id or name in _SKIP_COLUMNS:
            continue
        elif _is_day(c):
            missing: np.ndarray | None = None
            if name == tpl.anchor:
                d = anchor
            elif name in tpl.offsets:
                off, valid = tpl.offsets[name]
                v = valid[idx] | c.required
                d = np.minimum(anchor + np.where(v, off[idx], 0) * _DAY, np.maximum(obs_end, anchor))
                missing = ~v
            elif c.required:
                d = anchor
            else:
                continue
            dates[name] = (d, missing)
            cols[name] = _ts_array(d, missing) if dtype == "datetime" else _date_array(d, missing)
        elif dtype == "datetime":
            continue  # after the dates, below
        elif name in _UUID_COLUMNS:
            cols[name] = _uuids(rng, ids.size)
        elif name in tpl.table.column_names:
            cols[name] = tpl.table.column(name).take(idx_pa).combine_chunks()
    for c in tdef.columns:
        if c.datatype.lower() == "datetime" and c.name not in cols:
            d = dates.get(c.name.replace("_datetime", "_date"))
            if d is not None:
                cols[c.name] = _ts_array(d[0], d[1])
    if tdef.name in _JITTER_TABLES and "value_as_number" in cols:
        cols["value_as_number"] = _jitter(cols["value_as_number"], rng)
        if "value_source_value" in cols:
            num = cols["value_as_number"]
            as_text = pc.cast(num, pa.string())
            keep = pc.or_(pc.is_null(num), pc.is_null(cols["value_source_value"]))
            cols["value_source_value"] = pc.if_else(keep, cols["value_source_value"], as_text)
    return cols


def _person_chunk(rng: np.random.Generator, people: _People, p0: int, p1: int) -> dict[str, pa.Array]:
    birth = people.birth[p0:p1]
    sex = people.sex[p0:p1]
    month_start = birth.astype("datetime64[M]")
    n = p1 - p0
    return {
        "person_id": pa.array(np.arange(p0 + 1, p1 + 1, dtype=np.int64)),
        "gender_concept_id": pa.array(np.where(sex == "M", GENDER_CONCEPT["M"], GENDER_CONCEPT["F"]).astype(np.int64)),
        "year_of_birth": pa.array(birth.astype("datetime64[Y]").astype(np.int64) + 1970),
        "month_of_birth": pa.array(month_start.astype(np.int64) % 12 + 1),
        "day_of_birth": pa.array((birth - month_start.astype("datetime64[D]")) // _DAY + 1),
        "birth_datetime": _ts_array(birth),
        # French EDS: no race / ethnicity collected (OMOP "no matching concept").
        "race_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "ethnicity_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "person_source_value": _uuids(rng, n),
        "gender_source_value": pa.array(sex.astype(str)),
        "gender_source_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "race_source_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "ethnicity_source_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
    }


def generate(
    conn: psycopg.Connection,
    base: LocalBase,
    tables: Sequence[str],
    identities: Sequence[Identity],
    stamp: tuple[dt.datetime, dt.datetime],
    *,
    zip_path: Path | None = None,
) -> dict[str, int]:
    """Synthetic OMOP rows for `identities` (person_id 1..N), deterministic from `base.seed.seed`.

    Volumes per person follow the Synthea27Nj sample's ratios (x VOLUME_SCALE); concepts, type
    concepts, units and source values are sampled jointly from the sample's rows of the same table.
    Dates lie in each person's observation period (after birth, not after death). Persons are
    generated in blocks of BLOCK_PERSONS and streamed with COPY, so memory stays bounded.
    Also fills identity.patient. Does not commit. Returns rows per table.
    """
    zip_path = Path(zip_path) if zip_path else synthea_zip_path()
    seed = base.seed.seed
    n = len(identities)
    vtpl = _template(zip_path, "visit_occurrence")
    if vtpl is None:
        raise SourceError(f"{zip_path}: VISIT_OCCURRENCE.csv is needed to generate data", base=base.id)
    n_tpl_persons = max(len(_synthea_persons(zip_path)), 1)
    people = _people(seed, base.id, identities, vtpl.n / n_tpl_persons)
    blocks = [(b, p0, min(p0 + BLOCK_PERSONS, n)) for b, p0 in enumerate(range(0, n, BLOCK_PERSONS))]
    counts: dict[str, int] = {}

    def stamped(name: str, b: int, cols: dict[str, pa.Array]) -> pa.Table:
        rows = len(next(iter(cols.values()))) if cols else 0
        cols[omop.CHANGE_COLUMN] = _stamps(_rng(seed, base.id, name, "stamp", b), rows, stamp)
        return pa.table(cols)

    with conn.cursor() as cur:
        for name in tables:
            tdef = omop.table(name)
            maker = _chunk_maker(name, tdef, zip_path, seed, base.id, people, vtpl, tables)
            if maker is None:
                counts[name] = 0
                log.info("generated %s: not generated (0 rows)", name)
                continue
            chunks = (stamped(name, b, maker(b, p0, p1)) for b, p0, p1 in blocks)
            with _indexes_deferred(cur, SOURCE_SCHEMA, tdef.name):
                counts[name] = copy_tables(cur, SOURCE_SCHEMA, tdef.name, chunks)
            log.info("generated %s: %d rows", name, counts[name])
    _insert_identities(conn, identities, range(1, n + 1), base.site_number, salt=_crc(f"{base.id}:{seed}"))
    return counts


def _chunk_maker(
    name: str,
    tdef: omop.Table,
    zip_path: Path,
    seed: int,
    base_id: str,
    people: _People,
    vtpl: _Template,
    tables: Sequence[str],
) -> Callable[[int, int, int], dict[str, pa.Array]] | None:
    """Function (block, p0, p1) -> columns of that block's rows for table `name`, or None if not generated."""
    if name == "person":
        return lambda b, p0, p1: _person_chunk(_rng(seed, base_id, name, b), people, p0, p1)

    tpl = _template(zip_path, name)
    if name == "observation_period":
        period_type = tpl.table.column("period_type_concept_id")[0].as_py() if tpl else 44814724

        def op(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
            ids = np.arange(p0 + 1, p1 + 1, dtype=np.int64)
            return {
                "observation_period_id": pa.array(ids),
                "person_id": pa.array(ids),
                "observation_period_start_date": _date_array(people.obs_start[p0:p1]),
                "observation_period_end_date": _date_array(people.obs_end[p0:p1]),
                "period_type_concept_id": pa.array(np.full(p1 - p0, period_type, dtype=np.int64)),
            }

        return op
    if tpl is None or not tdef.has("person_id"):
        return None
    if name == "death":

        def death(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
            person = np.arange(p0, p1)[people.dead[p0:p1]]
            rng = _rng(seed, base_id, name, b)
            return _event_chunk(
                tdef, tpl, rng, person + 1, person, people.obs_end[person], people.obs_end[person], None
            )

        return death
    if name == "visit_occurrence":

        def visits(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
            v = _block_visits(seed, base_id, people, vtpl, b, p0, p1)
            rng = _rng(seed, base_id, name, b)
            cols = _event_chunk(
                tdef, vtpl, rng, v.ids, v.person, v.start, people.obs_end[v.person], None, idx=v.tpl_idx
            )
            cols["preceding_visit_occurrence_id"] = pa.array(v.preceding, mask=v.preceding == 0)
            return cols

        return visits

    # Event tables: counts per person proportional to the person's visits, at the sample's ratio.
    rate = VOLUME_SCALE * tpl.n / vtpl.n
    counts = _rng(seed, base_id, name, "counts").poisson(rate * people.nvisits)
    offset = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offset[1:])
    with_visit = tdef.has("visit_occurrence_id") and "visit_occurrence" in tables

    def events(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
        v = _block_visits(seed, base_id, people, vtpl, b, p0, p1)
        rng = _rng(seed, base_id, name, b)
        cnt = counts[p0:p1]
        person = np.repeat(np.arange(p0, p1), cnt)
        # Pick one of the person's visits, and a day inside it.
        local_off = people.visit_offset[person] - people.visit_offset[p0]
        k = local_off + (rng.random(person.size) * people.nvisits[person]).astype(np.int64)
        vs, ve = v.start[k], v.end[k]
        anchor = vs + (rng.random(person.size) * ((ve - vs) // _DAY + 1)).astype(np.int64) * _DAY
        ids = offset[p0] + np.arange(1, person.size + 1, dtype=np.int64)
        cols = _event_chunk(
            tdef, tpl, rng, ids, person, anchor, people.obs_end[person], v.ids[k] if with_visit else None
        )
        return _local_coding(cols, tdef, zip_path, _rng(seed, base_id, name, "coding", b))

    return events


# Local coding of generated hospitals, so that the platform has something to standardise:
# - SOURCE_CODED_RATE of the rows whose standard concept has a source code ('Maps to' from another
#   vocabulary) carry that source code only (concept 0, as a source system that does not map would);
# - UNMAPPABLE_RATE of the rows carry a local code with no vocabulary concept at all (both ids 0);
# - LOCAL_UNIT_RATE of the measurements with a unit use a hospital's spelling of it (`mmHg`, `mg/dl`…)
#   with no unit concept.
SOURCE_CODED_RATE = 0.08
UNMAPPABLE_RATE = 0.02
LOCAL_UNIT_RATE = 0.3
_LOCAL_UNITS = {
    "mm[Hg]": "mmHg",
    "mg/dL": "mg/dl",
    "mmol/L": "mmol/l",
    "g/dL": "g/dl",
    "Cel": "°C",
    "/min": "bpm",
    "kg/m2": "kg/m²",
    "pg/mL": "pg/ml",
    "g/L": "g/l",
    "fL": "fl",
}
_CODED_TABLES = {
    "condition_occurrence": ("condition_concept_id", "condition_source_concept_id"),
    "drug_exposure": ("drug_concept_id", "drug_source_concept_id"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_source_concept_id"),
    "measurement": ("measurement_concept_id", "measurement_source_concept_id"),
    "observation": ("observation_concept_id", "observation_source_concept_id"),
}


@cache
def _source_codes_cached(zip_path: str, mtime: float) -> dict[int, int]:
    """Standard concept -> one source concept that 'Maps to' it and to nothing else (smallest id)."""
    with zipfile.ZipFile(zip_path) as zf:
        member = zip_member(zf, "concept_relationship")
        if member is None:
            return {}
        data = zf.read(member)
    t = pacsv.read_csv(
        pa.BufferReader(data),
        convert_options=pacsv.ConvertOptions(
            include_columns=["concept_id_1", "concept_id_2", "relationship_id", "invalid_reason"],
            column_types={"concept_id_1": pa.int64(), "concept_id_2": pa.int64(), "invalid_reason": pa.string()},
            strings_can_be_null=True,
        ),
    )
    t = t.filter(pc.and_(pc.equal(t["relationship_id"], "Maps to"), pc.is_null(t["invalid_reason"])))
    t = t.filter(pc.not_equal(t["concept_id_1"], t["concept_id_2"]))
    targets: dict[int, set[int]] = {}
    for a, b in zip(t["concept_id_1"].to_pylist(), t["concept_id_2"].to_pylist(), strict=True):
        targets.setdefault(a, set()).add(b)
    out: dict[int, int] = {}
    for src in sorted(targets):
        tg = targets[src]
        if len(tg) == 1:
            out.setdefault(next(iter(tg)), src)
    return out


def source_codes(zip_path: Path) -> dict[int, int]:
    p = Path(zip_path).resolve()
    return _source_codes_cached(str(p), p.stat().st_mtime)


def _local_coding(
    cols: dict[str, pa.Array], tdef: omop.Table, zip_path: Path, rng: np.random.Generator
) -> dict[str, pa.Array]:
    spec = _CODED_TABLES.get(tdef.name)
    if spec is None or spec[0] not in cols:
        return cols
    cc, scc = spec

    def ints(a: pa.Array) -> np.ndarray:
        return pc.fill_null(a, 0).to_numpy(zero_copy_only=False).astype(np.int64)

    concept = ints(cols[cc])
    n = concept.size
    if n == 0:
        return cols
    codes = source_codes(zip_path)
    source = np.array([codes.get(int(c), 0) for c in concept], dtype=np.int64)
    u = rng.random(n)
    coded = (u < SOURCE_CODED_RATE) & (source != 0)
    unmappable = (u >= SOURCE_CODED_RATE) & (u < SOURCE_CODED_RATE + UNMAPPABLE_RATE)
    old_source = ints(cols[scc]) if scc in cols else np.zeros(n, dtype=np.int64)
    cols[cc] = pa.array(np.where(coded | unmappable, 0, concept))
    cols[scc] = pa.array(np.where(coded, source, np.where(unmappable, 0, old_source)))
    if tdef.name == "measurement" and "unit_source_value" in cols and "unit_concept_id" in cols:
        units = cols["unit_source_value"].to_pylist()
        local = rng.random(n) < LOCAL_UNIT_RATE
        new_units = [_LOCAL_UNITS.get(x, x) if (x and loc) else x for x, loc in zip(units, local, strict=True)]
        changed = np.array([a != b for a, b in zip(units, new_units, strict=True)])
        cols["unit_source_value"] = pa.array(new_units, pa.string())
        unit_c = cols["unit_concept_id"]
        cols["unit_concept_id"] = pc.if_else(pa.array(changed), pa.scalar(0, unit_c.type), unit_c)
    return cols


# ---------------------------------------------------------------------------------------------------
# One base, end to end
# ---------------------------------------------------------------------------------------------------


def seed_base(
    dsn: str,
    network: Network,
    base_id: str,
    stamp: tuple[dt.datetime, dt.datetime],
    tables: Sequence[str] | None = None,
) -> dict[str, int]:
    """(Re)create one hospital's demo source database in one transaction. Returns rows per omop table."""
    base = network.base(base_id)
    tables = [t.lower() for t in tables] if tables is not None else list(base.tables)
    plan = _plan(network)[base_id]
    identities = list(plan.identities)
    with psycopg.connect(dsn, autocommit=False) as conn:
        create_source_schema(conn, tables)
        if base.seed.source == "synthea27nj":
            counts = load_synthea(conn, synthea_zip_path(), tables, identities, stamp, site_number=base.site_number)
        else:
            counts = generate(conn, base, tables, identities, stamp)
        register_objectors(conn, [plan.person_ids[i] for i in plan.objectors], stamp)
        with conn.cursor() as cur:
            for name in tables:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SOURCE_SCHEMA, name)))
        conn.commit()
    log.info("base %s seeded: %d persons, %d rows", base_id, len(identities), sum(counts.values()))
    return counts


# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------
