"""The operator's milestone tools on the real embedded PostgreSQL: `eds milestone set|correct|unset|list`,
validation (unknown base or milestone, bad dates, evidence that looks like personal data), the audit trail with
who and when, the deliveries the national gate held back, and `available` set by an accepted HDH receipt."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from eds_network import catalogue, cli
from eds_network.catalogue import lead_time
from eds_network.catalogue import milestone_records as mr
from eds_network.core.config import load_network
from eds_network.national import transfer

pytestmark = pytest.mark.integration

NETWORK = load_network()


def _today() -> dt.date:
    """Today when the assertion runs (a suite may cross midnight between collection and the test)."""
    return dt.date.today()


@pytest.fixture
def cat(fresh_db):
    catalogue.create_schema(fresh_db)
    catalogue.register_network(fresh_db, NETWORK)
    return fresh_db


def _audit(dsn: str, action_prefix: str = "milestone.") -> list:
    a = catalogue.audit_t
    with catalogue.engine(dsn).connect() as conn:
        return conn.execute(select(a).where(a.c.action.like(f"{action_prefix}%")).order_by(a.c.id)).all()


def _eds(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_set_correct_unset_and_list_from_the_cli_with_who_and_when(cat, capsys):
    code, out, _ = _eds(
        capsys, "milestone", "set", "hosp_b", "contract_signed", "--date", "2026-01-05",
        "--evidence", "https://contracts.example/idf/hosp_b-2026", "--by", "alice", "--dsn", cat,
    )  # fmt: skip
    assert code == 0 and "hosp_b: contract_signed reached on 2026-01-05 (milestone.set by alice)" in out
    # correcting the date keeps the evidence; the audit keeps what it was
    code, out, _ = _eds(
        capsys, "milestone", "correct", "hosp_b", "contract_signed", "--date", "2026-01-07", "--by", "bob",
        "--dsn", cat,
    )  # fmt: skip
    assert code == 0 and "milestone.corrected by bob" in out
    got = mr.current_milestones(cat, "hosp_b")["contract_signed"]
    assert got["reached_on"] == "2026-01-07" and got["recorded_by"] == "bob"
    assert got["evidence"] == "https://contracts.example/idf/hosp_b-2026"
    assert dt.datetime.fromisoformat(got["recorded_at"]).date() == _today()
    # recording exactly the same again changes nothing and audits nothing
    assert mr.record(cat, "hosp_b", "contract_signed", dt.date(2026, 1, 7), recorded_by="carol")["action"] == (
        "unchanged"
    )
    audits = _audit(cat)
    assert [(a.actor, a.action, a.object) for a in audits] == [
        ("alice", "milestone.set", "base:hosp_b"),
        ("bob", "milestone.corrected", "base:hosp_b"),
    ]
    assert audits[1].details["previous_reached_on"] == "2026-01-05" and audits[1].details["reached_on"] == "2026-01-07"
    # today by default
    _eds(capsys, "milestone", "set", "hosp_b", "documentation", "--by", "alice", "--dsn", cat)
    assert mr.current_milestones(cat, "hosp_b")["documentation"]["reached_on"] == _today().isoformat()

    code, out, _ = _eds(capsys, "milestone", "list", "hosp_b", "--dsn", cat)
    assert code == 0 and "hosp_b  (stage: documentation)" in out
    assert "contract_signed   2026-01-07  by bob at" in out and "preparation       not reached" in out

    # withdrawing needs a reason, and is audited with what it was
    code, _, err = _eds(capsys, "milestone", "unset", "hosp_b", "documentation", "--by", "bob", "--dsn", cat)
    assert code == 2 and "needs a reason" in err
    code, out, _ = _eds(
        capsys, "milestone", "unset", "hosp_b", "documentation", "--reason", "recorded on the wrong base",
        "--by", "bob", "--dsn", cat,
    )  # fmt: skip
    assert code == 0 and "documentation" not in mr.current_milestones(cat, "hosp_b")
    last = _audit(cat)[-1]
    assert (last.action, last.details["previous_reached_on"], last.details["reason"]) == (
        "milestone.unset",
        _today().isoformat(),
        "recorded on the wrong base",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set", "hosp_zz", "preparation"], "unknown base 'hosp_zz': the catalogue has hosp_a, hosp_b"),
        (["set", "hosp_b", "signed"], "[base=hosp_b] unknown milestone 'signed': expected one of contract_signed,"),
        (["set", "hosp_b", "preparation", "--date", "01/02/2026"], "is not a date in the form YYYY-MM-DD"),
        (["set", "hosp_b", "preparation", "--date", "2999-01-01"], "is in the future"),
        (["set", "hosp_b", "preparation", "--date", "1999-12-31"], "is before 2000-01-01"),
        (["set", "hosp_b", "preparation", "--evidence", "x" * 501], "evidence is 501 characters long"),
        (["set", "hosp_b", "preparation", "--evidence", "mail jean.dupont@chu.fr"], "looks like it holds a direct"),
        (["set", "hosp_b", "preparation", "--evidence", "NIR 1850775123456 78"], "looks like it holds a direct"),
        (["correct", "hosp_b", "preparation"], "preparation is not recorded yet: nothing to correct"),
        (["unset", "hosp_b", "preparation", "--reason", "oops"], "preparation is not recorded: nothing to withdraw"),
        (["list", "hosp_zz"], "unknown base 'hosp_zz'"),
        (["set", "hosp_b"], "eds milestone set needs BASE MILESTONE"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_error_and_nothing_written(cat, capsys, argv, message):
    code, out, err = _eds(capsys, "milestone", *argv, "--by", "alice", "--dsn", cat)
    assert code == 2 and message in err, err
    assert "jean.dupont" not in err and "1850775123456" not in err  # refused evidence is never echoed
    assert _audit(cat) == [] and mr.current_milestones(cat, "hosp_b") == {}


def test_a_held_back_delivery_names_its_bases_and_milestones_and_clears_once_recorded(cat, capsys):
    blocked = transfer.delivery_gate(["hosp_a", "hosp_b"], {"hosp_a": {"contract_signed", "preparation"}})
    assert blocked == {"hosp_b": ["contract_signed", "preparation"]}
    msg = transfer.gate_message("idf", "idf-20261122-0001", blocked)
    assert "base hosp_b lacks contract_signed, preparation" in msg and "eds milestone set" in msg
    catalogue.record_skipped_delivery(
        cat, platform_id="idf", source_delivery="idf-20261122-0001", skipped=blocked, message=msg
    )
    [held] = mr.held_deliveries(cat)
    assert (held["platform"], held["source_delivery"], held["unblocked"]) == ("idf", "idf-20261122-0001", False)
    assert held["bases"] == [
        {"base": "hosp_b", "named": ["contract_signed", "preparation"], "missing": ["contract_signed", "preparation"],
         "recorded": []},
    ]  # fmt: skip
    mr.record(cat, "hosp_b", "contract_signed", evidence="contract ref. IDF-2026-014", recorded_by="alice")
    _eds(capsys, "milestone", "list", "--dsn", cat)
    _eds(capsys, "milestone", "set", "hosp_b", "preparation", "--by", "alice", "--dsn", cat)
    [held] = mr.held_deliveries(cat)
    assert held["unblocked"] and held["bases"][0]["recorded"] == ["contract_signed", "preparation"]
    code, out, _ = _eds(capsys, "milestone", "list", "--dsn", cat)
    assert "held back: platform idf delivery idf-20261122-0001: hosp_b lacks contract_signed, preparation" in out
    assert "(the next national run delivers)" in out
    # a delivery after that is no longer held back
    catalogue.record_run(cat, level="national", scope_id="idf", batch_id="idf-20261122-0001", status="success")
    assert mr.held_deliveries(cat) == []


def test_an_accepted_receipt_makes_the_bases_available_and_ends_their_lead_time(cat):
    signed = _today() - dt.timedelta(days=100)
    for b in ("hosp_a", "hosp_b"):
        catalogue.set_milestone(cat, b, "contract_signed", signed, evidence="t", recorded_by="t")
    before = {r["base_id"]: r for r in lead_time.lead_times(cat)}
    assert before["hosp_a"]["days"] is None and before["hosp_a"]["elapsed_days"] == 100  # pending
    assert catalogue.mark_available(cat, ["hosp_a", "hosp_b"], "idf-20261122-0001") == ["hosp_a", "hosp_b"]
    assert catalogue.mark_available(cat, ["hosp_a"], "idf-20261123-0001") == []  # never moved later
    rows = {r["base_id"]: r for r in lead_time.lead_times(cat)}
    assert rows["hosp_a"]["days"] == 100 and rows["hosp_a"]["elapsed_days"] is None
    got = mr.current_milestones(cat, "hosp_a")["available"]
    assert (
        got["evidence"] == "HDH receipt accepted: delivery idf-20261122-0001" and got["recorded_by"] == "eds-national"
    )
