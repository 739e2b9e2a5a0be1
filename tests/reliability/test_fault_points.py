"""The fault-injection helper itself: a no-op without EDS_FAULT, fires at the named point and occurrence only."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from eds_network.core import faults


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    yield
    faults.reset()


def test_without_eds_fault_every_point_is_a_no_op():
    for point in ("extract.mid_copy", "publish.after_manifest", "s3.PutObject"):
        faults.inject(point)


def test_fires_at_the_named_point_and_occurrence_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "publish.after_manifest@2, s3.UploadPart:unreachable")
    faults.inject("extract.mid_copy")
    faults.inject("publish.after_manifest")  # first time: not yet
    with pytest.raises(faults.InjectedFault, match="publish.after_manifest"):
        faults.inject("publish.after_manifest")
    faults.inject("publish.after_manifest")  # third time: no more
    with pytest.raises(EndpointConnectionError):
        faults.inject("s3.UploadPart")


def test_s3_clients_carry_the_hook(monkeypatch):
    from eds_network.core.storage import s3_client

    monkeypatch.setenv(faults.ENV, "s3.ListBuckets")
    with pytest.raises(faults.InjectedFault):
        s3_client("http://127.0.0.1:9", "a", "b").list_buckets()  # refused before any connection is tried
