"""`eds milestone …` — the operator's onboarding milestones in the catalogue (the `eds` command line's milestone part).

eds milestone set|correct BASE MILESTONE [--date D] [--evidence TEXT] [--by WHO]   record (or correct) one, audited
eds milestone unset BASE MILESTONE --reason TEXT   withdraw one, audited
eds milestone list [BASE]       every base's milestones (date, evidence, who, when) and the deliveries they hold back
"""

from __future__ import annotations

import os

from eds_network.core.config import load_network
from eds_network.core.errors import EdsError


def _stack():
    from eds_network.dev.stack import Stack

    return Stack.default()


def _milestone_dsn(args) -> str:
    """--dsn, else $EDS_CATALOGUE_DSN, else in a deployment ($EDS_DEPLOYMENT, e.g. compose's airflow-cli) the
    Airflow connection of the catalogue, else the embedded stack's catalogue."""
    if args.dsn or os.environ.get("EDS_CATALOGUE_DSN"):
        return args.dsn or os.environ["EDS_CATALOGUE_DSN"]
    if os.environ.get("EDS_DEPLOYMENT"):
        from eds_network.orchestration.connections import catalogue_dsn

        return catalogue_dsn(load_network())
    return _stack().dsn("catalogue")


def _print_milestones(dsn: str, base: str | None) -> None:
    from eds_network.catalogue import milestone_records as mr

    for b in mr.listing(dsn, base):
        print(f"{b['base']}  (stage: {b['stage']})")
        for m in b["milestones"]:
            if m["reached_on"] is None:
                print(f"    {m['milestone']:17s} not reached")
                continue
            when = (m["recorded_at"] or "")[:16].replace("T", " ")
            print(
                f"    {m['milestone']:17s} {m['reached_on']}  by {m['recorded_by']} at {when}"
                f"  evidence: {m['evidence'] or '-'}"
            )
    for h in mr.held_deliveries(dsn):
        state = "the next national run delivers" if h["unblocked"] else "still held"
        lacks = "; ".join(f"{b['base']} lacks {', '.join(b['missing'] or b['recorded'])}" for b in h["bases"])
        print(f"held back: platform {h['platform']} delivery {h['source_delivery']}: {lacks} ({state})")


def cmd_milestone(args) -> int:
    """Record, correct, withdraw or list onboarding milestones in the catalogue (audited, who and when)."""
    import getpass

    from sqlalchemy.exc import OperationalError

    from eds_network.catalogue import milestone_records as mr

    dsn = _milestone_dsn(args)
    who = args.by or getpass.getuser()
    try:
        if args.action == "list":
            _print_milestones(dsn, args.base)
            return 0
        if not args.milestone:
            raise EdsError(f"eds milestone {args.action} needs BASE MILESTONE")
        if args.action == "unset":
            mr.unset(dsn, args.base, args.milestone, reason=args.reason or "", recorded_by=who)
            print(f"{args.base}: {args.milestone} withdrawn (audited: milestone.unset by {who})")
            return 0
        out = mr.record(
            dsn,
            args.base,
            args.milestone,
            mr.parse_date(args.date, base=args.base),
            evidence=args.evidence,
            recorded_by=who,
            correct=args.action == "correct",
        )
    except OperationalError as exc:
        raise EdsError(f"catalogue database unreachable ({exc.orig}); is the stack up (`eds stack start`)?") from None
    print(f"{out['base']}: {out['milestone']} reached on {out['reached_on']} ({out['action']} by {who})")
    return 0


def add_parser(sub) -> None:
    ms = sub.add_parser("milestone", help="record, correct, withdraw or list onboarding milestones (audited)")
    ms.add_argument("action", choices=["set", "correct", "unset", "list"])
    ms.add_argument("base", nargs="?", help="the base id (list: optional)")
    ms.add_argument(
        "milestone", nargs="?", help="contract_signed, documentation, preparation, transfer_channel, available"
    )
    ms.add_argument("--date", help="the day it was reached, YYYY-MM-DD (default today; never in the future)")
    ms.add_argument("--evidence", help="a document reference or URL proving it (no personal data)")
    ms.add_argument("--by", help="who records it (default: your login name)")
    ms.add_argument("--reason", help="unset: why the milestone is withdrawn (required)")
    ms.add_argument(
        "--dsn",
        help="catalogue database (default: $EDS_CATALOGUE_DSN; with $EDS_DEPLOYMENT the eds_catalogue connection; "
        "else the embedded stack's)",
    )
    ms.set_defaults(fn=cmd_milestone)
