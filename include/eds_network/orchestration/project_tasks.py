"""Research projects: the steps that span zones, each zone's part run with that zone's own resources.

Feasibility: each platform expands the concept sets with its vocabulary and counts its member bases (counts only
leave it); the HDH counts per platform and network-wide on a pinned state of the national tables (counts only);
the answer is protected (`catalogue.feasibility.protect`) before anyone sees it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from eds_network.catalogue import feasibility as disclosure
from eds_network.catalogue import projects, quality_label
from eds_network.catalogue.stats import DEFAULT_K
from eds_network.core.cohort import Cohort
from eds_network.core.config import Network
from eds_network.core.crypto import Key
from eds_network.core.storage import S3Endpoint
from eds_network.national.projects import extract as project_extract
from eds_network.national.projects import feasibility as national_feasibility
from eds_network.national.projects.extract import Permit
from eds_network.national.tables import NationalTables
from eds_network.platform import feasibility as platform_feasibility

log = logging.getLogger(__name__)


def expand_cohort(network: Network, warehouses: Mapping[str, str], cohort: Cohort) -> tuple[Cohort, dict[str, str]]:
    """The cohort with every criterion's concept set expanded with its descendants (union over the platforms'
    vocabularies), and where each platform's expansion came from."""
    expanded: dict[int, set[int]] = {i: set(c.concepts) for i, c in enumerate(cohort.criteria)}
    sources = {}
    for p in network.platforms:
        got, sources[p.id] = platform_feasibility.expand_concepts(warehouses[p.id], cohort)
        for i, ids in got.items():
            expanded[i] |= set(ids)
    return cohort.with_concepts({i: tuple(sorted(s)) for i, s in expanded.items()}), sources


def raw_counts(
    network: Network,
    warehouses: Mapping[str, str],
    national: NationalTables,
    cohort: Cohort,
    *,
    pins: Mapping[str, int] | None = None,
) -> dict:
    """The unprotected counts (never published: `feasibility` protects them): per (platform, base), per platform,
    network-wide, with the pins and vocabulary sources used and the cohort as resolved."""
    resolved, sources = expand_cohort(network, warehouses, cohort)
    per_base: dict[tuple[str, str], int] = {}
    for p in network.platforms:
        for base, n in platform_feasibility.base_counts(warehouses[p.id], p, resolved).items():
            per_base[(p.id, base)] = n
    catalog = national.catalog(network.national)
    pinned = dict(pins) if pins is not None else national_feasibility.current_pins(catalog)
    counts = national_feasibility.platform_counts(catalog, resolved, pinned)
    return {
        "per_base": per_base,
        "per_platform": {p.id: counts.get(p.id, 0) for p in network.platforms},
        "network": counts.get(national_feasibility.NETWORK, 0),
        "pins": pinned,
        "sources": sources,
        "resolved": resolved,
    }


def feasibility(
    network: Network,
    warehouses: Mapping[str, str],
    national: NationalTables,
    cohort: Cohort,
    *,
    k: int = DEFAULT_K,
    pins: Mapping[str, int] | None = None,
) -> dict:
    """The protected feasibility answer of `cohort` on the network, with the pins and vocabulary sources used."""
    raw = raw_counts(network, warehouses, national, cohort, pins=pins)
    resolved, sources, pinned = raw["resolved"], raw["sources"], raw["pins"]
    answer = disclosure.protect(raw["per_base"], raw["per_platform"], raw["network"], k=k)
    answer["cohort"] = cohort.name
    answer["pins"] = pinned
    answer["descendants"] = sources
    answer["concepts"] = [len(c.concepts) for c in resolved.criteria]
    log.info(
        "feasibility %s: network %s, %d suppressed (%d secondary)",
        cohort.name,
        answer["network"] if answer["network"] is not None else "suppressed",
        len(answer["suppressed"]["primary"]) + len(answer["suppressed"]["secondary"]),
        len(answer["suppressed"]["secondary"]),
    )
    return answer


# ---------------------------------------------------------------------------------------------------------
# projects, permits, datasets


@dataclass(frozen=True)
class ProjectResources:
    """What the project steps of the HDH zone use: the catalogue, the national tables, the project areas' store
    (the HDH's bucket), the national key (project keys derive from it) and the national signing key."""

    catalogue_dsn: str = field(repr=False)
    national: NationalTables
    area: S3Endpoint
    national_key: Key
    signing_key: bytes = field(repr=False)


def resources_from_connections(network: Network) -> ProjectResources:
    """Inside an Airflow task of the national zone: every resource from the zone's own connections."""
    from eds_network.core import zones
    from eds_network.orchestration.connections import catalogue_dsn, key, pg_dsn, s3_endpoint, signing_key

    landing = s3_endpoint(network.national.landing_zone.connection_id, "HDH landing zone")
    return ProjectResources(
        catalogue_dsn=catalogue_dsn(network),
        national=NationalTables(pg_dsn(network.national.tables_connection_id, "HDH national tables"), landing),
        area=landing,
        national_key=key(network.national.key_connection_id, "national key"),
        signing_key=signing_key(zones.NATIONAL),
    )


def uncovered_bases(network: Network, bases: list[str]) -> dict[str, list[str]]:
    """Platform -> the member bases a permit leaves out, for each platform the permit touches only in part."""
    asked = set(bases)
    out = {}
    for pid in sorted({network.platform_of(b).id for b in bases}):
        left = sorted(m.id for m in network.platform(pid).members if m.id not in asked)
        if left:
            out[pid] = left
    return out


def platforms_of(network: Network, bases: list[str]) -> list[str]:
    """The platforms a permit's bases make up. The national tables know each row's platform, not its base (the
    delivery drops `_site`, docs/security.md): a permit naming only some bases of a platform cannot be narrowed to
    them there, so it is refused rather than served with the other bases' patients."""
    partial = uncovered_bases(network, bases)
    if partial:
        detail = "; ".join(
            f"platform {p}: the permit names {', '.join(sorted(b for b in bases if network.platform_of(b).id == p))}"
            f" but not {', '.join(left)}"
            for p, left in partial.items()
        )
        raise projects.ProjectError(
            "a permit's bases must cover whole platforms: the national tables do not record a row's base, so an "
            f"extract cannot be narrowed to some bases of a platform ({detail})"
        )
    return sorted({network.platform_of(b).id for b in bases})


def create_project(
    network: Network,
    catalogue_dsn: str,
    warehouses: Mapping[str, str],
    project_id: str,
    *,
    cohort: Cohort,
    tables: Mapping[str, list[str]],
    bases: list[str],
    title: str,
    purpose: str,
    requester: str,
    actor: str,
) -> dict:
    """Record a project request; its cohort's concept sets are resolved (descendants) now, so the permit names
    explicit concept lists and the national zone, which has no vocabulary, extracts exactly those."""
    for b in bases:
        network.base(b)  # unknown base: ConfigError naming it
    platforms_of(network, bases)  # a permit covers whole platforms (refused before anything is recorded)
    resolved, sources = expand_cohort(network, warehouses, cohort)
    doc = json.loads(resolved.model_dump_json())
    doc["requested"] = json.loads(cohort.model_dump_json())
    doc["descendants_from"] = sources
    projects.create(
        catalogue_dsn,
        project_id,
        title=title,
        purpose=purpose,
        requester=requester,
        bases=bases,
        tables=tables,
        cohort=doc,
        actor=actor,
    )
    return projects.get(catalogue_dsn, project_id, actor=actor)


def permit_of(network: Network, project: Mapping) -> Permit:
    cohort = dict(project["cohort"])
    cohort.pop("requested", None)
    cohort.pop("descendants_from", None)
    return Permit(
        project_id=project["id"],
        permit_reference=project["permit_reference"] or "",
        tables=project["tables"],
        cohort=Cohort.model_validate(cohort),
        platforms=platforms_of(network, list(project["bases"])),
    )


def quality_of(catalogue_dsn: str, bases: list[str]) -> dict:
    """The EHDS quality and utility label of each base the project uses (from the catalogue)."""
    out = {}
    for b in sorted(bases):
        try:
            out[b] = quality_label.label(catalogue_dsn, b)
        except KeyError:
            out[b] = None
    return out


def extract_project(
    network: Network,
    res: ProjectResources,
    project_id: str,
    *,
    actor: str,
    pins: Mapping[str, int] | None = None,
    today: dt.date | None = None,
) -> dict:
    """Extract the project's dataset from `pins` (default: the current snapshots) into its area and record it."""
    project = projects.get(res.catalogue_dsn, project_id, actor=actor)
    today = today or dt.datetime.now(dt.UTC).date()
    if project["status"] not in ("permit_granted", "extracted", "delivered"):
        raise projects.ProjectError(f"project {project_id!r} is {project['status']}: no permit to extract under")
    if project["permit_expires_on"] is not None and project["permit_expires_on"] <= today:
        raise projects.ProjectError(f"project {project_id!r}: its permit expired on {project['permit_expires_on']}")
    catalog = res.national.catalog(network.national)
    pinned = dict(pins) if pins is not None else national_feasibility.current_pins(catalog)
    permit = permit_of(network, project)
    ds = project_extract.extract(
        catalog,
        res.area.client(),
        network.national.landing_zone.bucket,
        permit,
        {t: s for t, s in pinned.items() if t in permit.tables or t in {c.table for c in permit.cohort.criteria}}
        | {"person": pinned["person"]},
        national_secret=res.national_key.secret,
        signing_key=res.signing_key,
        key_id="national",
        quality=quality_of(res.catalogue_dsn, list(project["bases"])),
    )
    live = [d for d in project["datasets"] if d["deleted_at"] is None]
    if ds.extract_id not in {d["extract_id"] for d in live}:
        projects.record_dataset(res.catalogue_dsn, project_id, ds.catalogue_row(), actor=actor)
    # an earlier dataset of the project (before a withdrawal, older pins) leaves the area: one dataset at a time
    s3 = res.area.client()
    bucket = network.national.landing_zone.bucket
    for d in live:
        if d["extract_id"] != ds.extract_id:
            gone = project_extract.delete_prefix_checked(s3, bucket, d["prefix"])
            projects.record_deletion(
                res.catalogue_dsn,
                project_id,
                d["extract_id"],
                {**gone, "reason": "superseded"},
                actor=actor,
                status=None,
            )
    return asdict(ds)


def _retire(network: Network, res: ProjectResources, p: Mapping, *, status: str, reason: str, actor: str) -> dict:
    """Delete every object of the project's area (nothing left, checked), mark its live datasets deleted and put
    `status` (expired | closed) on its timeline with what was deleted."""
    deletion = project_extract.delete_area(res.area.client(), network.national.landing_zone.bucket, p["id"])
    live = [d for d in p["datasets"] if d["deleted_at"] is None]
    for i, d in enumerate(live):
        last = i == len(live) - 1
        projects.record_deletion(
            res.catalogue_dsn,
            p["id"],
            d["extract_id"],
            {**deletion, "reason": reason},
            actor=actor,
            status=status if last else None,
        )
    if not live:
        projects.set_status(res.catalogue_dsn, p["id"], status, actor=actor, details={**deletion, "reason": reason})
    return {"project": p["id"], "datasets_deleted": len(live), **deletion}


def expire_due(network: Network, res: ProjectResources, *, actor: str, today: dt.date | None = None) -> list[dict]:
    """Delete the datasets of every permit that expired (no object left under its area) and record it."""
    today = today or dt.datetime.now(dt.UTC).date()
    done = []
    for p in projects.list_projects(res.catalogue_dsn, actor=actor):
        if p["status"] in ("expired", "closed", "requested") or p["permit_expires_on"] is None:
            continue
        if p["permit_expires_on"] > today:
            continue
        out = _retire(network, res, p, status="expired", reason="permit expired", actor=actor)
        log.info(
            "project %s: permit expired on %s, %d objects deleted",
            p["id"],
            p["permit_expires_on"],
            out["objects_deleted"],
        )
        done.append(out)
    return done


def close_project(
    network: Network, res: ProjectResources, project_id: str, *, actor: str, reason: str = "project closed"
) -> dict:
    """Close a project before its permit expires (study finished, permit withdrawn): its datasets are deleted from
    its area (nothing left, checked) and `closed` goes on its timeline with the deletion and the reason. A
    closed or expired project cannot be closed again (nor extracted)."""
    p = projects.get(res.catalogue_dsn, project_id, actor=actor)
    if p["status"] in ("closed", "expired"):
        raise projects.ProjectError(f"project {project_id!r} is already {p['status']}")
    out = _retire(network, res, p, status="closed", reason=reason, actor=actor)
    log.info("project %s: closed (%s), %d objects deleted", project_id, reason, out["objects_deleted"])
    return out


def withdrawal_notices(
    network: Network, res: ProjectResources, *, actor: str, project_ids: list[str] | None = None
) -> dict[str, int]:
    """For every live dataset (of `project_ids`, default all): the patients it holds who are no longer in the
    national tables (an objection reached them) get a withdrawal notice by project pseudonym; the next extract is
    without them."""
    catalog = res.national.catalog(network.national)
    pins = national_feasibility.current_pins(catalog)
    if "person" not in pins:
        return {}
    tbl = catalog.load_table(("omop", "person"))
    national_now = tbl.scan(selected_fields=("person_id",), snapshot_id=pins["person"]).to_arrow().column("person_id")
    s3 = res.area.client()
    bucket = network.national.landing_zone.bucket
    out = {}
    for p in projects.list_projects(res.catalogue_dsn, actor=actor):
        live = [d for d in p["datasets"] if d["deleted_at"] is None]
        if not live or (project_ids is not None and p["id"] not in project_ids):
            continue
        current = project_extract.project_pseudonyms(national_now.to_pylist(), res.national_key.secret, p["id"])
        noticed = {w["project_person_id"] for w in projects.withdrawals(res.catalogue_dsn, p["id"], actor=actor)}
        n = 0
        for d in live:
            held = project_extract.dataset_persons(s3, bucket, d["prefix"])
            gone = sorted(held - current - noticed)
            n += projects.record_withdrawals(
                res.catalogue_dsn, p["id"], d["extract_id"], gone, reason="objection", actor=actor
            )
            noticed |= set(gone)
        out[p["id"]] = n
    return out
