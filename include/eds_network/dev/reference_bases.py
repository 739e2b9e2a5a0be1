"""The reference bases of the national catalogue, beside the demo hospitals.

The Health Data Hub's 2023 activity report names seven bases as the catalogue's references: BNDMR
(AP-HP), ESME (Unicancer), OSCOUR (Santé publique France), ATU CBPC (Roche), e-SIS (CRCDC Occitanie),
Hepather (Inserm) and e-must (ARS Île-de-France). They are recorded in `catalogue.base` with
`reference = true` and no platform (they do not flow through this network's DAGs), with their onboarding
milestones in `catalogue.milestone`, so that the lead-time figures (`eds_network.catalogue.lead_time`) and the
HealthDCAT-AP descriptions (`eds_network.catalogue.healthdcat`) cover them too.

**The dates below are illustrative placeholders** (plausible 2022–2023 dates), not the report's figures:
we do not have the report's text. Replace them with the report's dates when available; the evidence
column of every milestone says so. They are chosen to show what the catalogue must handle:
  - bases available within the 7-month target and bases over it;
  - bases not yet available (lead time still running);
  - OSCOUR and e-SIS set up their transfer channel *before* preparation was complete (milestones reached
    out of order, which the catalogue accepts).

`seed_reference_bases(dsn)` is idempotent: seeding twice gives the same rows, and a milestone already
recorded with the same date is not rewritten (so the audit trail does not grow on a re-seed).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from eds_network import catalogue

D = dt.date
EVIDENCE = "HDH activity report 2023 — illustrative placeholder date, to be replaced by the report's figure"
KINDS = ("registry", "cohort", "hospital_eds", "other")


@dataclass(frozen=True)
class ReferenceBase:
    id: str
    label: str
    kind: str
    holder: str
    description: str
    milestones: dict[str, dt.date] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.id}: unknown kind {self.kind!r}")
        unknown = set(self.milestones) - set(catalogue.MILESTONES)
        if unknown:
            raise ValueError(f"{self.id}: unknown milestones {sorted(unknown)}")


REFERENCE_BASES: tuple[ReferenceBase, ...] = (
    ReferenceBase(
        id="ref_bndmr",
        label="BNDMR — Banque nationale de données maladies rares",
        kind="registry",
        holder="AP-HP",
        description="National rare-disease data bank: minimum data set of patients followed in rare-disease "
        "expert centres.",
        milestones={
            "contract_signed": D(2022, 3, 14),
            "documentation": D(2022, 5, 2),
            "preparation": D(2022, 7, 11),
            "transfer_channel": D(2022, 8, 29),
            "available": D(2022, 9, 26),  # 196 days: within target
        },
    ),
    ReferenceBase(
        id="ref_esme",
        label="ESME — Épidémio-Stratégie Médico-Économique",
        kind="cohort",
        holder="Unicancer",
        description="Real-world data platform of French comprehensive cancer centres (breast, ovarian, lung "
        "cancer cohorts).",
        milestones={
            "contract_signed": D(2022, 1, 24),
            "documentation": D(2022, 4, 4),
            "preparation": D(2022, 9, 19),
            "transfer_channel": D(2022, 11, 7),
            "available": D(2023, 1, 16),  # 357 days: over target
        },
    ),
    ReferenceBase(
        id="ref_oscour",
        label="OSCOUR — Organisation de la surveillance coordonnée des urgences",
        kind="other",
        holder="Santé publique France",
        description="Syndromic surveillance network of emergency departments (daily visit summaries).",
        milestones={
            "contract_signed": D(2022, 6, 1),
            "documentation": D(2022, 7, 18),
            "transfer_channel": D(2022, 9, 5),  # set up before preparation: out of order
            "preparation": D(2022, 11, 21),
            "available": D(2022, 12, 19),  # 201 days: within target
        },
    ),
    ReferenceBase(
        id="ref_atu_cbpc",
        label="ATU CBPC — cohorte d'accès précoce, cancer bronchique à petites cellules",
        kind="cohort",
        holder="Roche",
        description="Early-access (ATU) cohort of small-cell lung cancer patients.",
        milestones={
            "contract_signed": D(2022, 10, 3),
            "documentation": D(2022, 12, 12),
            "preparation": D(2023, 3, 6),
            "transfer_channel": D(2023, 4, 17),
            "available": D(2023, 5, 22),  # 231 days: over target
        },
    ),
    ReferenceBase(
        id="ref_e_sis",
        label="e-SIS — système d'information du dépistage organisé des cancers",
        kind="registry",
        holder="CRCDC Occitanie",
        description="Organised cancer-screening information system of the Occitanie regional coordination centre.",
        milestones={
            "contract_signed": D(2023, 1, 9),
            "documentation": D(2023, 3, 20),
            "transfer_channel": D(2023, 5, 15),  # set up before preparation: out of order
            # preparation not reached yet: not available
        },
    ),
    ReferenceBase(
        id="ref_hepather",
        label="Hepather — cohorte ANRS CO22 hépatites virales",
        kind="cohort",
        holder="Inserm",
        description="National cohort of patients with chronic hepatitis B or C infection (ANRS CO22).",
        milestones={
            "contract_signed": D(2022, 11, 14),
            "documentation": D(2023, 1, 30),
            "preparation": D(2023, 4, 3),
            "transfer_channel": D(2023, 5, 30),
            "available": D(2023, 6, 12),  # 210 days: within target
        },
    ),
    ReferenceBase(
        id="ref_e_must",
        label="e-MUST — évaluation en médecine d'urgence des stratégies thérapeutiques de l'infarctus",
        kind="registry",
        holder="ARS Île-de-France",
        description="Regional registry of ST-elevation myocardial infarction managed by emergency services "
        "(SAMU/SMUR) in Île-de-France.",
        milestones={
            "contract_signed": D(2023, 4, 24),
            "documentation": D(2023, 7, 10),
            # preparation and transfer channel not reached yet: not available
        },
    ),
)


def reference_base(base_id: str) -> ReferenceBase:
    for b in REFERENCE_BASES:
        if b.id == base_id:
            return b
    raise KeyError(base_id)


def seed_reference_bases(dsn: str, actor: str = "eds seed") -> list[dict]:
    """Upsert the reference bases and their milestones into the catalogue (idempotent).

    Returns one dict per base: id, kind, holder, milestones and its catalogue stage.
    """
    with catalogue.engine(dsn).begin() as conn:
        for b in REFERENCE_BASES:
            values = {"label": b.label, "kind": b.kind, "platform_id": None, "holder": b.holder, "reference": True}
            inserted = conn.execute(
                insert(catalogue.base_t)
                .values(id=b.id, **values)
                .on_conflict_do_update(index_elements=["id"], set_=values)
                .returning(text("xmax = 0"))
            ).scalar()
            if inserted:
                catalogue.audit(conn, actor, "base.registered", f"base:{b.id}", {"reference": True, "kind": b.kind})
    out = []
    for b in REFERENCE_BASES:
        have = catalogue.milestones(dsn, b.id)
        for m, day in b.milestones.items():
            if have.get(m) != day:
                catalogue.set_milestone(dsn, b.id, m, day, evidence=EVIDENCE, recorded_by=actor)
        reached = catalogue.milestones(dsn, b.id)
        out.append(
            {
                "id": b.id,
                "kind": b.kind,
                "holder": b.holder,
                "milestones": reached,
                "stage": catalogue.stage(reached),
            }
        )
    return out
