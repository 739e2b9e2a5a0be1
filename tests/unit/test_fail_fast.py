"""Deterministic errors fail a task at once; only transient ones reach Airflow's retries."""

from __future__ import annotations

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from eds_network.core import zones
from eds_network.core.errors import ConfigError, IntegrityError, SourceError, TransferError
from eds_network.core.faults import InjectedFault
from eds_network.orchestration.zoned import fail_fast, is_transient, zone_task


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _sqlstate(code: str) -> psycopg.Error:
    cls = psycopg.errors.lookup(code)
    return cls("server said no")


DETERMINISTIC = [
    SourceError("source type 'text' does not match OMOP 5.4 'float'", base="b", table="t", column="c"),
    ConfigError("unknown base"),
    IntegrityError("staged file does not match its SHA-256"),
    TransferError("endpoint http://x is not TLS"),
    _client_error("AccessDenied", 403),
    _client_error("NoSuchKey", 404),
    _sqlstate("42501"),  # insufficient privilege: a zone's role reaching what is not its own
    _sqlstate("22P02"),  # invalid text representation
    psycopg.OperationalError('connection failed: FATAL: password authentication failed for user "x"'),
    KeyError("a bug"),
    ValueError("a bug"),
]

TRANSIENT = [
    SourceError("source connection lost during extraction", base="b", table="t", transient=True),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    _client_error("InternalError", 500),
    _client_error("SlowDown", 503),
    _sqlstate("57P01"),  # admin shutdown: the server restarts
    _sqlstate("40001"),  # serialization failure
    psycopg.OperationalError("connection failed: Connection refused"),
    ConnectionResetError(),
    InjectedFault("injected fault at extract.mid_copy"),
]


@pytest.mark.parametrize("exc", DETERMINISTIC, ids=lambda e: type(e).__name__)
def test_a_deterministic_error_fails_at_once(exc):
    assert not is_transient(exc)

    @fail_fast
    def body():
        raise exc

    with pytest.raises(AirflowFailException, match="not retried") as info:
        body()
    assert info.value.__cause__ is exc


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_a_transient_error_is_left_to_the_retries(exc):
    assert is_transient(exc)

    @fail_fast
    def body():
        raise exc

    with pytest.raises(type(exc)):
        body()


def test_an_error_raised_from_a_transient_one_is_transient():
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        except EndpointConnectionError as cause:
            raise TransferError("platform p: upload of k failed: EndpointConnectionError") from cause
    except TransferError as exc:
        assert is_transient(exc)


def test_the_error_message_names_where_never_a_value():
    @fail_fast
    def body():
        raise KeyError("1 rue de la Paix")  # text of a non-EdsError may quote data

    with pytest.raises(AirflowFailException) as info:
        body()
    assert "rue" not in str(info.value) and "KeyError" in str(info.value)

    @fail_fast
    def drift():
        raise SourceError("source type 'text' does not match", base="hosp_a", table="measurement", column="v")

    with pytest.raises(AirflowFailException, match=r"base=hosp_a table=measurement column=v"):
        drift()


def test_airflow_exceptions_pass_through():
    @fail_fast
    def body():
        raise AirflowSkipException("not this base")

    with pytest.raises(AirflowSkipException):
        body()


def test_fail_fast_keeps_the_signature_airflow_reads_context_from():
    import inspect

    def body(table: str, data_interval_start=None):
        return table, data_interval_start

    wrapped = fail_fast(body)
    assert list(inspect.signature(wrapped).parameters) == ["table", "data_interval_start"]
    assert wrapped("person", data_interval_start=1) == ("person", 1)


def test_zone_task_puts_the_task_on_its_zones_queue_with_backoff():
    from airflow.sdk import dag

    @dag(dag_id="zoned_probe", schedule=None)
    def probe():
        @zone_task(zones.keys("p1"))
        def evaluate() -> None:
            pass

        evaluate()

    t = probe().get_task("evaluate")
    assert t.queue == "keys-p1"
    assert t.retry_exponential_backoff > 1 and t.max_retry_delay is not None
