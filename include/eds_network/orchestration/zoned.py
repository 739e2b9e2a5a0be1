"""Every task of every DAG in one line: `@zone_task(zone)` = Airflow's `@task` on the zone's queue, its body
wrapped by `fail_fast`, its OpenLineage metadata reported by the body (`lineage.LineageOperator`).

- **The zone's queue** (`core/zones.py`): only that zone's workers take the task, and only they resolve that
  zone's secrets. A new zone kind (`keys:<platform>`, …) needs nothing here: its queue is derived from its name.
- **Fail fast**: a deterministic error (schema mismatch, configuration, integrity or signature failure, a
  refused credential, a bug) fails the task at once (`AirflowFailException`: no retry, the night goes on
  without it); only a transient one (connection lost, server restarting, S3 5xx or throttling) is raised as it
  is and retried by Airflow with exponential backoff (30 s, 60 s, … at most 10 min).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

from airflow.sdk.bases.decorator import task_decorator_factory
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from eds_network.core import zones
from eds_network.core.errors import EdsError, db_error_is_transient
from eds_network.core.faults import InjectedFault
from eds_network.orchestration.lineage import LineageOperator

RETRY_DELAY = dt.timedelta(seconds=30)
RETRY_BACKOFF = 2.0  # Airflow's multiplier: 30 s, 60 s, 120 s, …
MAX_RETRY_DELAY = dt.timedelta(minutes=10)

# S3 error codes a retry can cure (besides any HTTP 5xx).
_TRANSIENT_S3_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}


def is_transient(exc: BaseException) -> bool:
    """Whether trying the task again later can succeed. Follows the `raise … from` chain."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _transient_itself(e):
            return True
        e = e.__cause__
    return False


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, EdsError):
        return exc.transient
    if isinstance(exc, InjectedFault):  # the reliability tests' stand-in for a crash mid-step
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    module = type(exc).__module__ or ""
    if module.startswith("psycopg"):
        import psycopg

        coded = bool(getattr(exc, "sqlstate", None))
        return (coded or isinstance(exc, psycopg.OperationalError)) and db_error_is_transient(exc)
    if module.startswith("botocore") or module.startswith("urllib3"):
        return _boto_transient(exc)
    return False


def _boto_transient(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):  # endpoint down, connection closed, read timeout
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= 500 or err.get("Code") in _TRANSIENT_S3_CODES
    return False


def fail_fast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a task body; a deterministic error becomes `AirflowFailException` (one try), a transient one is
    re-raised for Airflow's retries. Airflow's own exceptions (skip, fail, defer) pass through."""

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AirflowException:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            # EdsError messages name base, table and column, never a value; other errors are named by type only
            # (their text may quote data), the traceback above keeps the detail for the operator.
            what = str(exc) if isinstance(exc, EdsError) else f"{type(exc).__name__} (see the traceback above)"
            raise AirflowFailException(f"{what} — a deterministic error: not retried") from exc

    return body


def zone_task(zone: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """`@task(**kwargs)` in `zone`: on the zone's queue, fail-fast, transient errors retried with backoff, its
    OpenLineage datasets and facets what the body reported (`orchestration/lineage.py`)."""
    kwargs.setdefault("retry_delay", RETRY_DELAY)
    kwargs.setdefault("retry_exponential_backoff", RETRY_BACKOFF)
    kwargs.setdefault("max_retry_delay", MAX_RETRY_DELAY)

    def decorate(fn: Callable[..., Any]) -> Any:
        return task_decorator_factory(
            python_callable=fail_fast(fn), decorated_operator_class=LineageOperator, queue=zones.queue(zone), **kwargs
        )

    return decorate
