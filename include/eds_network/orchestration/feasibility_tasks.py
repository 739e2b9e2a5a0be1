"""Feasibility in zones (`dags/eds_project_feasibility.py`): each platform counts its member bases in its own
warehouse and seals the counts to the national zone's box public key; the national zone opens them, counts per
platform and network-wide on the national tables (deduplicated by the national pseudonym), protects the answer
(`catalogue.feasibility.protect`) and records only the protected answer in the catalogue.

What crosses Airflow's metadata database (XCom) between the zones: the expanded concept sets (public vocabulary,
no count), the sealed per-base counts (ciphertext only the national box private key opens) and the protected
answer. A raw count never travels in clear.

The steps give the same answer as `project_tasks.feasibility` (the CLI) for the same cohort and pins.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence

from eds_network.catalogue import feasibility as disclosure
from eds_network.catalogue import feasibility_requests, projects
from eds_network.catalogue.stats import DEFAULT_K
from eds_network.core.cohort import Cohort, CohortError, from_fields, validate
from eds_network.core.config import Platform
from eds_network.core.errors import ConfigError
from eds_network.national.projects import feasibility as national_feasibility
from eds_network.national.tables import NationalTables
from eds_network.platform import feasibility as platform_feasibility

log = logging.getLogger(__name__)

SEALED_KIND = "eds-feasibility-counts/1"


def cohort_from_params(params: Mapping) -> Cohort:
    """The cohort a DAG run asks about: `cohort_json` when given (the whole model as JSON), else the form's fields
    (one criterion). An invalid cohort fails naming the field (`CohortError`), never echoing a value."""
    text = str(params.get("cohort_json") or "").strip()
    if not text:
        return from_fields(params)
    try:
        doc = json.loads(text)
    except ValueError:
        raise CohortError("feasibility cohort: invalid field(s) cohort_json (not JSON)") from None
    return validate(doc)


def platform_expansion(warehouse_dsn: str, cohort: Cohort) -> dict:
    """One platform's expansion of the concept sets (descendants from its vocabulary): public vocabulary only."""
    got, source = platform_feasibility.expand_concepts(warehouse_dsn, cohort)
    return {"concepts": {str(i): list(ids) for i, ids in got.items()}, "source": source}


def resolve(cohort: Cohort, expansions: Mapping[str, Mapping]) -> tuple[Cohort, dict[str, str]]:
    """The cohort with each criterion's concepts the union of the platforms' expansions (as the CLI resolves it)."""
    merged: dict[int, set[int]] = {i: set(c.concepts) for i, c in enumerate(cohort.criteria)}
    for e in expansions.values():
        for i, ids in e["concepts"].items():
            merged[int(i)] |= set(ids)
    resolved = cohort.with_concepts({i: tuple(sorted(s)) for i, s in merged.items()})
    return resolved, {p: e["source"] for p, e in sorted(expansions.items())}


def seal_counts(counts: Mapping[str, int], platform_id: str, public_key: bytes, key_version: str) -> dict:
    """Per-base counts sealed to the national box public key (anonymous sender, PyNaCl's sealed box)."""
    from nacl.public import PublicKey, SealedBox

    payload = json.dumps({"kind": SEALED_KIND, "platform": platform_id, "per_base": dict(counts)}).encode()
    sealed = SealedBox(PublicKey(public_key)).encrypt(payload)
    return {"platform": platform_id, "key_version": key_version, "sealed": base64.b64encode(sealed).decode()}


def platform_sealed_counts(
    warehouse_dsn: str, platform: Platform, resolved: Cohort, public_key: bytes, key_version: str
) -> dict:
    """The platform's step: its member bases' counts in its warehouse, sealed (nothing in clear leaves it)."""
    counts = platform_feasibility.base_counts(warehouse_dsn, platform, resolved)
    log.info("feasibility: platform %s counted %d bases (sealed to the national zone)", platform.id, len(counts))
    return seal_counts(counts, platform.id, public_key, key_version)


def open_counts(sealed: Sequence[Mapping], private_key: bytes) -> dict[tuple[str, str], int]:
    """(platform, base) -> count from the platforms' sealed boxes; a box that does not open, or says another
    platform than the one that sent it, fails naming the platform."""
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    box = SealedBox(PrivateKey(private_key))
    out: dict[tuple[str, str], int] = {}
    for s in sealed:
        pid = str(s["platform"])
        try:
            doc = json.loads(box.decrypt(base64.b64decode(s["sealed"])))
        except (CryptoError, ValueError):
            raise ConfigError(f"feasibility: the sealed counts of platform {pid} do not open") from None
        if doc.get("kind") != SEALED_KIND or doc.get("platform") != pid:
            raise ConfigError(f"feasibility: the sealed counts of platform {pid} are not that platform's")
        out.update({(pid, b): int(n) for b, n in doc["per_base"].items()})
    return out


def national_answer(
    national: NationalTables,
    network,
    cohort: Cohort,
    resolved: Cohort,
    sources: Mapping[str, str],
    per_base: Mapping[tuple[str, str], int],
    *,
    k: int = DEFAULT_K,
    pins: Mapping[str, int] | None = None,
) -> dict:
    """The protected answer, shaped as `project_tasks.feasibility`'s."""
    catalog = national.catalog(network.national)
    pinned = dict(pins) if pins is not None else national_feasibility.current_pins(catalog)
    counts = national_feasibility.platform_counts(catalog, resolved, pinned)
    per_platform = {p.id: counts.get(p.id, 0) for p in network.platforms}
    answer = disclosure.protect(per_base, per_platform, counts.get(national_feasibility.NETWORK, 0), k=k)
    answer["cohort"] = cohort.name
    answer["pins"] = pinned
    answer["descendants"] = dict(sources)
    answer["concepts"] = [len(c.concepts) for c in resolved.criteria]
    return answer


def record(catalogue_dsn: str, cohort: Cohort, answer: Mapping, *, actor: str, request_id: int | None = None) -> None:
    """Record the protected answer in the catalogue (audited); with `request_id` (a question asked on the operator
    page) the request becomes answered with it."""
    doc = cohort.model_dump(mode="json")
    if request_id is None:
        projects.record_feasibility(catalogue_dsn, doc, answer, actor=actor)
    else:
        feasibility_requests.answer(catalogue_dsn, int(request_id), doc, answer, actor=actor)
    log.info(
        "feasibility %s: network %s, %d suppressed (%d secondary)",
        cohort.name,
        answer["network"] if answer["network"] is not None else "suppressed",
        len(answer["suppressed"]["primary"]) + len(answer["suppressed"]["secondary"]),
        len(answer["suppressed"]["secondary"]),
    )
