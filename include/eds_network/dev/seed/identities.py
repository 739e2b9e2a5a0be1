"""Synthetic identities of the demo hospitals, planned from the configuration alone: who is treated where, shared patients (same NIR, names, birth date, sex), missing or wrong NIRs, objectors; and the ground truth linkage must find."""

from __future__ import annotations

import datetime as dt
import logging
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from eds_network.core.config import LocalBase, Network
from eds_network.core.errors import ConfigError
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401
from eds_network.dev.seed.sample import _synthea_persons, synthea_zip_path

log = logging.getLogger(__name__)

SOURCE_SCHEMA = "omop"
IDENTITY_SCHEMA = "identity"
DELETED_TABLE = "_deleted"

# Share of generated (non-shared) patients without an NIR, and with an NIR whose key is wrong.
NO_NIR_RATE = 0.08
BAD_KEY_RATE = 0.02
# Multiplies the Synthea27Nj per-person volumes in `generate` (1.0 = the sample's ratios).
VOLUME_SCALE = 1.0
# Persons per generation block: one block of MEASUREMENT is ~100k rows at the sample's ratios.
BLOCK_PERSONS = 256
# Generated clinical history ends here (observation periods, visits, deaths).
HISTORY_END = dt.date(2025, 12, 31)


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
        dept, com = _birth_place(postcode, birth_place[i], int(other_place[i]), int(abroad[i]), int(commune[i]))
        ordno = int(order[i])
        nir = make_nir(sex, birth, dept, com, ordno)
        while nir[:13] in used_nir13:  # keep NIRs unique across the whole network
            ordno = ordno % 999 + 1
            nir = make_nir(sex, birth, dept, com, ordno)
        used_nir13.add(nir[:13])
        tel = _phone(int(phone[i]), phone_fmt[i])
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


def _birth_place(postcode: str, where: float, other_place: int, abroad: int, commune: int) -> tuple[str, int]:
    """The NIR's département and commune of birth: 70 % the residence's département, 24 % elsewhere in France,
    6 % abroad (département 99, a country code)."""
    if where < 0.70:
        dept, prefix = _dept_of_postcode(postcode)
    elif where < 0.94:
        dept, prefix = _dept_of_postcode(_PLACES[other_place][0])
    else:
        return "99", _ABROAD[abroad]
    if dept == "99":
        return dept, _ABROAD[abroad]
    return dept, (prefix * 100 + commune % 50 + 1) if prefix is not None else commune


def _phone(number: int, style: float) -> str | None:
    """A mobile number: none (10 %), spaced pairs (50 %) or compact."""
    digits = f"{number:08d}"
    if style < 0.1:
        return None
    if style < 0.6:
        return "06 " + " ".join(digits[j : j + 2] for j in range(0, 8, 2))
    return "06" + digits


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


def _copied_patients(base: LocalBase, n: int, plans: dict[str, _BasePlan]) -> tuple[list[Identity], dict[str, int]]:
    """Patients copied from the bases in `shared_with` (their own, valid-NIR, non-objector patients): the copies
    and how many from each base."""
    spec = base.seed
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
        picks = _rng(spec.seed, base.id, other, "share").choice(np.asarray(pool, dtype=np.int64), take, replace=False)
        copied.extend(plans[other].identities[int(p)] for p in picks)
        shared_counts[other] = take
    return copied, shared_counts


def _placed(rng: np.random.Generator, n: int, copied: list[Identity], own: list[Identity]):
    """The copies at random positions among the base's own patients (a base without copies, such as the synthea
    base, keeps its own order: positions follow PERSON.csv): (identities, shared positions, own positions)."""
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
    return identities, shared_pos, own_pos


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

        copied, shared_counts = _copied_patients(base, n, plans)
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

        identities, shared_pos, own_pos = _placed(rng, n, copied, own)

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
