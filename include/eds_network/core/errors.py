"""One error family for the whole network; messages name base, table and column, never a patient value."""

from __future__ import annotations


class EdsError(Exception):
    """An error an operator can act on. `str()` gives `[base=… table=… column=…] message`.

    `transient` says whether trying again later can succeed (a connection lost, a server restarting): only those
    are retried by the orchestration; every other EdsError (schema, configuration, integrity, signature) is
    deterministic and fails its task at once.
    """

    def __init__(
        self,
        message: str,
        *,
        base: str | None = None,
        table: str | None = None,
        column: str | None = None,
        transient: bool = False,
    ):
        self.message = message
        self.base = base
        self.table = table
        self.column = column
        self.transient = transient
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " ".join(
            f"{k}={v}" for k, v in (("base", self.base), ("table", self.table), ("column", self.column)) if v
        )
        return f"[{where}] {self.message}" if where else self.message


class ConfigError(EdsError):
    """The network configuration is invalid or names something that does not exist."""


class SourceError(EdsError):
    """A source database is unreachable, or a table / column is missing or mistyped."""


class QualityError(EdsError):
    """A fatal quality check failed for a whole batch: the batch is quarantined at the local level."""


class IntegrityError(EdsError):
    """A file does not match its manifest (checksum, size, schema): it is rejected and left where it is."""


class AccountingError(EdsError):
    """extracted != published + quarantined + excluded: the run must not be recorded as a success."""


class TransferError(EdsError):
    """The landing zone refused or could not prove a delivery (TLS, encryption, verification)."""


class AlreadyDelivered(EdsError):
    """A delivery's manifest already exists in the landing zone: nothing to do, not an error for the run."""


# SQLSTATE classes and codes a retry can cure: connection exceptions, the server shutting down or starting,
# resources exhausted, serialization failures and deadlocks.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "58")
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "40001", "40P01", "55P03"}
# Connection failures (no SQLSTATE) that are a configuration error, not an outage.
_PERMANENT_CONNECT_FAILURES = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "certificate",
    "invalid dsn",
    "invalid connection option",
)


def db_error_is_transient(exc: BaseException) -> bool:
    """Whether a database driver error (psycopg's, duck-typed on `sqlstate`) can succeed when tried again."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state[:2] in _TRANSIENT_SQLSTATE_CLASSES or state in _TRANSIENT_SQLSTATES
    text = str(exc).lower()
    return not any(marker in text for marker in _PERMANENT_CONNECT_FAILURES)
