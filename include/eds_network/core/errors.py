"""One error family for the whole network; messages name base, table and column, never a patient value."""

from __future__ import annotations


class EdsError(Exception):
    """An error an operator can act on. `str()` gives `[base=… table=… column=…] message`."""

    def __init__(self, message: str, *, base: str | None = None, table: str | None = None, column: str | None = None):
        self.message = message
        self.base = base
        self.table = table
        self.column = column
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
