"""The network configuration: `config/network.yaml`, validated by pydantic.

`load_network()` is called at DAG parse time, so it only reads the YAML file: no database, no network.
An invalid file raises `ConfigError` whose message names the file, the key path and the problem, e.g.
`config/network.yaml: platforms[1].members[0].schedule: invalid cron expression '0 25 * * *'`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from eds_network.core import omop
from eds_network.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "config" / "network.yaml"
ID_PATTERN = r"^[a-z][a-z0-9_]{1,40}$"


def _cron(value: str) -> str:
    if not croniter.is_valid(value):
        raise ValueError(f"invalid cron expression {value!r}")
    return value


def _tz(value: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


Cron = Annotated[str, AfterValidator(_cron)]
TimeZone = Annotated[str, AfterValidator(_tz)]
Ident = Annotated[str, Field(pattern=ID_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseKind(StrEnum):
    hospital_eds = "hospital_eds"
    registry = "registry"
    cohort = "cohort"


class PlatformKind(StrEnum):
    regional = "regional"
    thematic = "thematic"


class SeedSpec(_Model):
    """How `eds seed` fills this base's demo source. Ignored in production."""

    source: Literal["synthea27nj", "generated"] = "generated"
    patients: int = Field(default=200, ge=1, le=10_000_000)
    seed: int = 0
    shared_with: list[Ident] = Field(
        default_factory=list, description="bases whose patients this base also treats (linkage ground truth)"
    )
    shared_fraction: float = Field(default=0.3, ge=0, le=1)
    objectors: int = Field(default=2, ge=0, description="patients put in the opposition registry")


# Text columns that can carry a name, an identifier or free text: never allow-listed, whatever the config says.
# Here (not in pseudonymise) so that DAG parsing, which validates the config, does not import pyarrow.compute.
NEVER_ALLOWED_TEXT: frozenset[str] = frozenset(
    {"person_source_value", "provider_source_value", "care_site_source_value", "sig", "stop_reason"}
)


class Pseudonymisation(_Model):
    """What a platform's members remove, generalise or shift before rows leave the hospital (issue #6).

    Set on the platform (its members share one level-1 key, so they must share one policy); stamped onto each
    member base. Changing it on a running platform triggers a full re-extraction of every member's tables
    (the policy's fingerprint is recorded with each published table), like a key rotation.
    """

    date_shift_days: int = Field(
        default=0,
        ge=0,
        le=3650,
        description="shift every event date of a patient by one offset in [-N, N] days (never 0) keyed by the "
        "network's dedicated date-shift key on the linkage identity (not the level-1 key: a key rotation leaves "
        "offsets unchanged); 0 = off (the default: levels that link on dates must keep it off)",
    )
    keep_birth_month: bool = Field(default=False, description="month_of_birth is kept (year_of_birth always is)")
    text_allow_list: list[str] = Field(
        default_factory=list,
        description="text columns allowed to leave the hospital in addition to the built-in coded *_source_value "
        "allow-list (never person_source_value or a free-text column)",
    )

    @field_validator("text_allow_list")
    @classmethod
    def _text_columns(cls, names: list[str]) -> list[str]:
        if not names:
            return []
        text_columns = {
            c.name
            for t in omop.CLINICAL_TABLES
            for c in omop.table(t).columns
            if c.datatype.lower().startswith("varchar")
        }
        for n in names:
            if n in NEVER_ALLOWED_TEXT:
                raise ValueError(f"column {n!r} can carry a name or an identifier and never leaves the hospital")
            if n not in text_columns:
                raise ValueError(f"{n!r} is not a text column of an OMOP CDM 5.4 clinical table")
        return sorted(set(names))


class LocalBase(_Model):
    id: Ident
    label: str
    kind: BaseKind = BaseKind.hospital_eds
    site_number: int = Field(ge=1, le=9000, description="namespaces this site's event ids at the platform")
    finess: str | None = Field(default=None, pattern=r"^\d{9}$")
    source_connection_id: str
    tables: list[str] = Field(default_factory=lambda: list(omop.DEFAULT_TABLES))
    schedule: Cron = "0 1 * * *"
    timezone: TimeZone = "Europe/Paris"
    start_date: dt.date = dt.date(2026, 1, 1)
    seed: SeedSpec = Field(default_factory=SeedSpec)
    quality_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-check overrides keyed 'checkName:table.column': {threshold_pct: …} or "
        "{disabled: true, reason: …}",
    )
    change_columns: dict[str, str | None] = Field(
        default_factory=dict,
        description="per-table change column (a timestamp the hospital EDS maintains) when it is not "
        f"'{omop.CHANGE_COLUMN}'; null = the table has none: it is snapshotted and diffed by content hash",
    )
    ipp_formats: list[str] = Field(
        default_factory=list,
        description="regular expressions of this hospital's patient numbers (IPP), each matched as a whole token: "
        "a coded value holding one is scrubbed before it leaves, and `eds leak-scan` looks for them",
    )
    # Filled by the platform validator below; never written in YAML.
    platform: str = ""
    asset_uri: str = ""
    pseudonymisation: Pseudonymisation = Field(default_factory=lambda: Pseudonymisation())

    @field_validator("tables")
    @classmethod
    def _tables_exist(cls, tables: list[str]) -> list[str]:
        tables = [t.lower() for t in tables]
        for t in tables:
            if t in ("note", "note_nlp"):
                raise ValueError(f"table {t!r} holds free text and never leaves the local level")
            if t not in omop.CLINICAL_TABLES:
                raise ValueError(f"{t!r} is not an OMOP CDM 5.4 clinical table")
        if "person" not in tables:
            raise ValueError("'person' must be in scope: every other table refers to it")
        if len(set(tables)) != len(tables):
            raise ValueError("a table is listed twice")
        order = {t: i for i, t in enumerate(omop.DEFAULT_TABLES)}
        return sorted(tables, key=lambda t: order.get(t, len(order)))

    @field_validator("ipp_formats")
    @classmethod
    def _ipp_formats_are_specific(cls, formats: list[str]) -> list[str]:
        for f in formats:
            try:
                rx = re.compile(f)
            except re.error as exc:
                raise ValueError(f"ipp_formats: {f!r} is not a regular expression ({exc})") from None
            if f.startswith("^") or f.endswith("$"):
                raise ValueError(f"ipp_formats: {f!r}: no anchors, each format is matched as a whole token")
            if rx.fullmatch("") or any(rx.fullmatch(w) for w in ("0", "1", "12", "123", "2024", "1234")):
                raise ValueError(f"ipp_formats: {f!r} matches ordinary short numbers: too broad for a patient number")
            if rx.groups:
                raise ValueError(f"ipp_formats: {f!r}: use non-capturing groups (?:…) only")
        return formats

    @model_validator(mode="after")
    def _change_columns_in_scope(self) -> LocalBase:
        for t, col in self.change_columns.items():
            if t not in self.tables:
                raise ValueError(f"change_columns: table {t!r} is not in this base's tables")
            if col is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", col):
                raise ValueError(f"change_columns.{t}: {col!r} is not a column name")
        return self

    @model_validator(mode="after")
    def _quality_overrides_match_checks(self) -> LocalBase:
        from eds_network.core import quality_keys

        problems = quality_keys.problems(self.quality_overrides, self.tables)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def change_column(self, table: str) -> str | None:
        """The column that dates a row's last change, or None: snapshot and diff by content hash."""
        return self.change_columns.get(table, omop.CHANGE_COLUMN)

    @property
    def dag_id(self) -> str:
        return f"eds_local__{self.id}"

    @property
    def asset_name(self) -> str:
        return f"eds_local__{self.id}"

    @property
    def start_date_dt(self) -> dt.datetime:
        import pendulum

        return pendulum.datetime(self.start_date.year, self.start_date.month, self.start_date.day, tz=self.timezone)


class S3Location(_Model):
    connection_id: str
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{2,62}$")]
    prefix: str = ""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        return f"{v}/" if v else ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class KeyHolder(_Model):
    """The holder of a platform's level-1 key (zone `keys:<platform>`, a trusted third party).

    Members never hold the key: they post blinded elements (RFC 9497 OPRF) to `exchange` and read back the
    evaluated elements. The holder counts what it evaluates per member and per night, and refuses a night
    above the ceiling (a brute force of the key would show as a spike).
    """

    exchange: S3Location | None = Field(
        default=None,
        description="the holder's exchange area; default: bucket eds-keys-<platform> on the intake's connection",
    )
    max_evaluations_per_night: int = Field(default=100_000, ge=1, description="per member hospital")
    member_ceilings: dict[str, int] = Field(
        default_factory=dict, description="per-member override (e.g. the first night of a large onboarding)"
    )

    def ceiling(self, base_id: str) -> int:
        return self.member_ceilings.get(base_id, self.max_evaluations_per_night)


class Platform(_Model):
    id: Ident
    label: str
    kind: PlatformKind
    warehouse_connection_id: str
    intake: S3Location
    outbox: S3Location
    key_connection_id: str = Field(description="level-1 OPRF key of this platform, held by its key holder only")
    key_holder: KeyHolder = Field(default_factory=lambda: KeyHolder())
    pseudonymisation: Pseudonymisation = Field(default_factory=lambda: Pseudonymisation())
    members: list[LocalBase] = Field(min_length=1)
    deadline: Cron = Field(
        default="0 7 * * *",
        description="when the platform consolidates with whatever arrived, members missing being recorded late",
    )
    deadline_timezone: TimeZone = "Europe/Paris"
    reconcile_every_days: int = Field(
        default=7,
        ge=0,
        description="a full reconciliation delivery (counts + content hash per table, repaired where the HDH "
        "differs) when the last one is this many days old; 0: never",
    )
    vocabulary: Literal["required", "none"] = Field(
        default="required",
        description="required: the OMOP vocabulary archive named by $EDS_VOCABULARY_ZIP must be there, else the "
        "consolidation fails at once; none: consolidate without standardisation (an explicit choice, logged)",
    )

    @model_validator(mode="after")
    def _stamp_members(self) -> Platform:
        if self.key_holder.exchange is None:
            exchange = S3Location(
                connection_id=self.intake.connection_id, bucket=f"eds-keys-{self.id}".replace("_", "-")
            )
            object.__setattr__(self.key_holder, "exchange", exchange)
        unknown = sorted(set(self.key_holder.member_ceilings) - {m.id for m in self.members})
        if unknown:
            raise ValueError(f"key_holder.member_ceilings names bases that are not members: {unknown}")
        for m in self.members:
            object.__setattr__(m, "platform", self.id)
            object.__setattr__(m, "asset_uri", f"{self.intake.uri}{m.id}/")
            object.__setattr__(m, "pseudonymisation", self.pseudonymisation)
        return self

    @property
    def dag_id(self) -> str:
        return f"eds_mutualised__{self.id}"

    @property
    def asset_name(self) -> str:
        return f"eds_mutualised__{self.id}"

    @property
    def asset_uri(self) -> str:
        return self.outbox.uri


class NationalTarget(_Model):
    id: Ident = "hdh"
    label: str = "Health Data Hub"
    landing_zone: S3Location
    allow_plain_http_loopback: bool = Field(
        default=False, description="accept an http:// endpoint on 127.0.0.0/8 (embedded stack only)"
    )
    key_connection_id: str = "eds_key_national"
    box_key_connection_id: str = "eds_key_national_box"
    tables_connection_id: str = Field(
        default="eds_hdh_tables", description="the HDH zone's PostgreSQL: Iceberg SQL catalog + apply ledger"
    )


class Network(_Model):
    name: str
    transport_key_connection_id: str = "eds_key_transport"
    # The hospitals' dedicated date-shift key (only resolved where a platform shifts dates): never rotated with
    # the level-1 or transport keys, so a patient's offset does not change at a key rotation.
    date_shift_key_connection_id: str = "eds_key_date_shift"
    catalogue_connection_id: str = "eds_catalogue"
    national: NationalTarget
    platforms: list[Platform] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Network:
        seen: dict[str, str] = {}
        for p in self.platforms:
            if p.id in seen:
                raise ValueError(f"platform id {p.id!r} is used twice")
            seen[p.id] = "platform"
            sites: set[int] = set()
            for b in p.members:
                if b.id in seen:
                    raise ValueError(f"base id {b.id!r} is used twice")
                seen[b.id] = "base"
                if b.site_number in sites:
                    raise ValueError(f"site_number {b.site_number} is used twice in platform {p.id!r}")
                sites.add(b.site_number)
        bases = {b.id for p in self.platforms for b in p.members}
        for p in self.platforms:
            for b in p.members:
                for other in b.seed.shared_with:
                    if other not in bases:
                        raise ValueError(f"base {b.id!r}: seed.shared_with names unknown base {other!r}")
        return self

    @cached_property
    def local_bases(self) -> list[LocalBase]:
        return [b for p in self.platforms for b in p.members]

    def base(self, base_id: str) -> LocalBase:
        for b in self.local_bases:
            if b.id == base_id:
                return b
        known = ", ".join(b.id for b in self.local_bases)
        raise ConfigError(f"unknown base {base_id!r} (configured: {known})", base=base_id)

    def resized(self, base_id: str, patients: int) -> Network:
        """A copy of this network whose generated base `base_id` seeds `patients` patients (tests, benches)."""
        raw = self.model_dump(mode="json")
        for p in raw["platforms"]:
            for m in p["members"]:
                if m["id"] == base_id:
                    m["seed"]["patients"] = patients
        return Network.model_validate(raw)

    def platform(self, platform_id: str) -> Platform:
        for p in self.platforms:
            if p.id == platform_id:
                return p
        raise ConfigError(f"unknown platform {platform_id!r}")

    def platform_of(self, base_id: str) -> Platform:
        return self.platform(self.base(base_id).platform)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def state_home() -> Path:
    """Where this installation keeps its working state (Data Docs, the embedded stack): $EDS_HOME, else `.eds/`."""
    return Path(os.environ.get("EDS_HOME", REPO_ROOT / ".eds")).resolve()


def config_path() -> Path:
    return Path(os.environ.get("EDS_NETWORK_CONFIG", DEFAULT_CONFIG))


# libyaml's loader when PyYAML has it: every DAG file calls load_network() at parse time, and the pure-Python
# loader was more than half of the DAG folder's parse time with 200 bases (bench/bench_airflow.py).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_network(path: str | Path | None = None) -> Network:
    """Read and validate the network file (default: $EDS_NETWORK_CONFIG or config/network.yaml)."""
    path = Path(path) if path else config_path()
    try:
        display = path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        display = path
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise ConfigError(f"{display}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{display}:{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{display}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Network.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            where = _loc(err["loc"]) or "(top level)"
            lines.append(f"{display}: {where}: {msg}")
        raise ConfigError("\n".join(lines)) from None
