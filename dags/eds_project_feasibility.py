"""
### Feasibility of a research cohort (`eds_project_feasibility`): manual, from the Trigger form

How many patients match a cohort, per base, per platform and network-wide (each patient once, by the national
pseudonym), every count under the small-cell threshold *k* suppressed with secondary suppression. No row leaves
any zone; **raw counts never reach the central side in clear**:

1. **expand__&lt;platform&gt;** (platform zone): each criterion's concept set with its descendants through the
   platform vocabulary's `concept_ancestor` (public vocabulary, no count).
2. **count__&lt;platform&gt;** (platform zone): each member base's matching patients in the platform warehouse
   (each row still carries its site), with the union of the platforms' expansions; the counts are **sealed to the
   national zone's box public key** (PyNaCl sealed box): XCom holds only ciphertext.
3. **answer** (national zone): opens the sealed counts with the national box private key, counts per platform and
   network-wide on the pinned national tables, protects the answer (primary + secondary suppression) and records
   the protected answer in the catalogue (`project_feasibility`, audited). Shown on the operator page
   (`/eds/projects`).

The form asks one criterion (table, concept ids, descendants), a period `[start, end)`, age and sex filters and k;
`cohort_json` (the whole cohort model of `core/cohort.py` as JSON, several criteria) replaces the fields when
given. The same cohort gives the same answer as `eds project feasibility --cohort FILE`. The operator page's form
("Ask a feasibility question" on `/eds/projects`) records the question as *requested* and triggers this DAG with
its `request_id`: the answer marks it *answered* on the page.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context

from eds_network.core import zones
from eds_network.core.cohort import EVENT_COLUMNS, SEX_CONCEPTS
from eds_network.core.config import load_network
from eds_network.orchestration.zoned import zone_task

NETWORK = load_network()


def _operator() -> str:
    user = getattr(get_current_context()["dag_run"], "triggering_user_name", None)
    return f"airflow:{user or 'operator'}"


def _cohort():
    from eds_network.orchestration.feasibility_tasks import cohort_from_params

    return cohort_from_params(get_current_context()["params"])


@dag(
    dag_id="eds_project_feasibility",
    description="Feasibility counts of a cohort: per base, platform and network, protected; sealed raw counts",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    is_paused_upon_creation=False,  # manual only: triggering it is the question
    tags=["eds", "feasibility", "projects"],
    default_args={"owner": "eds-network", "retries": 2, "retry_delay": dt.timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "name": Param("cohort", type="string", maxLength=80, title="Cohort name"),
        "table": Param("condition_occurrence", type="string", enum=sorted(EVENT_COLUMNS), title="Criterion table"),
        "concepts": Param("201826", type="string", title="Concept ids", description="Separated by commas or spaces."),
        "descendants": Param(True, type="boolean", title="With descendants (concept_ancestor)"),
        "start": Param("2000-01-01", type="string", format="date", title="Period start (inclusive)"),
        "end": Param("2027-01-01", type="string", format="date", title="Period end (exclusive)"),
        "age_min": Param(None, type=["null", "integer"], minimum=0, title="Minimum age"),
        "age_max": Param(None, type=["null", "integer"], minimum=0, title="Maximum age"),
        "sex": Param([], type="array", items={"type": "string", "enum": sorted(SEX_CONCEPTS)}, title="Sex"),
        "k": Param(11, type="integer", minimum=2, title="Small-cell threshold k"),
        "request_id": Param(
            None,
            type=["null", "integer"],
            title="Request (operator page)",
            description="Set by the operator page's form: the question this run answers. Empty otherwise.",
        ),
        "cohort_json": Param(
            "",
            type="string",
            title="Cohort as JSON (optional)",
            description="The whole cohort model (several criteria); replaces the fields above when given.",
        ),
    },
)
def eds_project_feasibility():
    expansions = {}
    for p in NETWORK.platforms:

        @zone_task(zones.platform(p.id), task_id=f"expand__{p.id}")
        def expand(platform_id: str = p.id) -> dict:
            from eds_network.orchestration import feasibility_tasks
            from eds_network.orchestration.connections import pg_dsn

            wh = load_network().platform(platform_id).warehouse_connection_id
            return feasibility_tasks.platform_expansion(pg_dsn(wh, f"warehouse of platform {platform_id}"), _cohort())

        expansions[p.id] = expand()

    sealed = []
    for p in NETWORK.platforms:

        @zone_task(zones.platform(p.id), task_id=f"count__{p.id}")
        def count(expanded: dict, platform_id: str = p.id) -> dict:
            from eds_network.orchestration import feasibility_tasks
            from eds_network.orchestration.connections import box_public_key, pg_dsn

            network = load_network()
            platform = network.platform(platform_id)
            resolved, _ = feasibility_tasks.resolve(_cohort(), expanded)
            public, version = box_public_key(network.national.box_key_connection_id)
            dsn = pg_dsn(platform.warehouse_connection_id, f"warehouse of platform {platform_id}")
            return feasibility_tasks.platform_sealed_counts(dsn, platform, resolved, public, version)

        sealed.append(count(expansions))

    @zone_task(zones.NATIONAL)
    def answer(expanded: dict, sealed_counts: list) -> dict:
        from eds_network.orchestration import feasibility_tasks, project_tasks
        from eds_network.orchestration.connections import box_private_key

        network = load_network()
        cohort = _cohort()
        res = project_tasks.resources_from_connections(network)
        private, _ = box_private_key(network.national.box_key_connection_id)
        per_base = feasibility_tasks.open_counts(sealed_counts, private)
        resolved, sources = feasibility_tasks.resolve(cohort, expanded)
        params = get_current_context()["params"]
        k = int(params["k"])
        out = feasibility_tasks.national_answer(res.national, network, cohort, resolved, sources, per_base, k=k)
        rid = params.get("request_id")
        feasibility_tasks.record(res.catalogue_dsn, cohort, out, actor=_operator(), request_id=rid)
        return out

    answer(expansions, sealed)


eds_project_feasibility()
