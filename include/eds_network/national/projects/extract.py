"""A project dataset: the permitted extract of the national tables, under the project's own pseudonyms.

- **Source**: one pinned state of the national tables (`pins`: table -> snapshot id). A pin whose snapshot was
  expired (the upkeep after an objection expires the snapshots that still held the objector) fails: the permit
  is re-extracted from the current state, which no longer holds the patient.
- **Rows**: only the cohort's patients (the permit's cohort, matched on the rows of the permitted platforms),
  only the permitted tables and columns (OMOP CDM 5.4 names, types and order), event rows only inside the
  permit's period. The national tables carry each row's platform, not its base: a permit's bases restrict the
  extract to their platforms.
- **Project pseudonyms**: the project's key is HKDF-SHA-256 (the `cryptography` library) of the national key
  with the project id as info. `person_id` and every other `*_id` column (not the concept ids) go through the
  keyed 63-bit permutation of `core.rowids` under that key (person ids and row ids in separate domains): two
  projects' ids never join (different keys), and a project's ids are not the national ones.
- **Reproducible bytes**: rows sorted on the (re-keyed) primary key, then every column; Parquet written with
  fixed options (zstd, at most 128k rows per row group, no timestamps); the manifest holds no time and is signed with
  the national Ed25519 key (deterministic signatures), so the same permit and pins give the same files.
- **Bounded memory**: each table is streamed from the scan, re-keyed batch by batch and sorted by buckets
  (`write_sorted`: spilled to disk in disjoint ranges of the re-keyed first key, each range sorted alone), and
  every file goes from disk to the area: memory holds one bucket (`SORT_ROWS` rows) and the cohort's ids, not a
  table.
- **Written** into the project's area: `projects/<project>/<extract_id>/` in the HDH's bucket, files first, then
  `dictionary.json` (each column: OMOP table, type, role), `quality.json` (the quality summary of the bases
  used, handed in by the caller from the catalogue) and the signed `_manifest.json` last.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThan

from eds_network.core import omop, rowids
from eds_network.core.cohort import EVENT_COLUMNS, Cohort
from eds_network.core.errors import IntegrityError
from eds_network.core.exchange import MANIFEST
from eds_network.core.signing import sign_document
from eds_network.core.storage import list_keys, sha256_file, sha256_object
from eds_network.national.projects.feasibility import NETWORK, cohort_persons
from eds_network.national.tables import NAMESPACE, PLATFORM_COLUMN

log = logging.getLogger(__name__)

AREA_ROOT = "projects/"
PERSON_DOMAIN = "project-person"
ROW_DOMAIN = "project-row"
ROW_GROUP = 131_072
DATE_COLUMNS = {**{t: d for t, (_, d) in EVENT_COLUMNS.items()}, "observation_period": "observation_period_start_date"}


def project_key(national_secret: bytes, project_id: str) -> bytes:
    """The project's 256-bit key: HKDF-SHA-256 of the national key, info = the project id (domain-separated)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"eds-project|" + project_id.encode()).derive(
        national_secret
    )


def area_prefix(project_id: str) -> str:
    return f"{AREA_ROOT}{project_id}/"


@dataclass(frozen=True)
class Permit:
    """What the permit allows (from the catalogue's project row)."""

    project_id: str
    permit_reference: str
    tables: Mapping[str, Sequence[str]]  # table -> columns
    cohort: Cohort
    platforms: Sequence[str]


@dataclass
class Dataset:
    project_id: str
    extract_id: str
    prefix: str
    pins: dict[str, int]
    manifest_sha256: str
    files: int
    bytes: int
    rows: dict[str, int]
    persons: int
    status: str = "delivered"  # delivered | already_delivered
    sha256: dict[str, str] = field(default_factory=dict)

    def catalogue_row(self) -> dict:
        d = asdict(self)
        d.pop("status")
        d.pop("sha256")
        return d


def check_permit(permit: Permit) -> None:
    """Every permitted table and column is OMOP CDM 5.4; `person_id` is needed to link a table to its persons."""
    for t, cols in permit.tables.items():
        spec = omop.table(t)  # KeyError names the table
        unknown = sorted(set(cols) - set(spec.column_names))
        if unknown:
            raise IntegrityError(f"permit {permit.permit_reference}: columns outside OMOP 5.4 {unknown}", table=t)


def rekey_ids(tbl: pa.Table, table: str, key: bytes) -> pa.Table:
    """Every `*_id` column (not the concept ids) under the project's key; `person_id` in its own domain."""
    spec = omop.table(table)
    for name in tbl.column_names:
        if not spec.has(name) or not spec.column(name).is_id:
            continue
        col = tbl.column(name).combine_chunks()
        new = rowids.rekey(col, key, PERSON_DOMAIN if name == "person_id" else ROW_DOMAIN)
        if name == spec.primary_key:
            rowids.check_no_collision(col, new, table=table, column=name)
        tbl = tbl.set_column(tbl.column_names.index(name), name, new)
    return tbl


SORT_ROWS = 262_144  # rows the sort holds in memory at once (one bucket), whatever the table's size
ID_SPACE = 1 << 63  # re-keyed ids are 63-bit, non-negative


def _scan_batches(
    catalog: SqlCatalog, table: str, pins: Mapping[str, int], permit: Permit, persons: pa.Array
) -> tuple[Iterator[pa.Table], int]:
    """The permitted rows of `table` as a stream of small tables (cohort, period, platforms, columns; OMOP types),
    and an upper bound of their number (the records of the data files the scan reads)."""
    spec = omop.table(table)
    cols = [c for c in spec.column_names if c in set(permit.tables[table])]
    tbl_ice = catalog.load_table((NAMESPACE, table))
    snap = pins.get(table)
    if snap is None or tbl_ice.metadata.snapshot_by_id(snap) is None:
        raise IntegrityError(
            f"pinned snapshot {snap} is no longer in the national tables (expired after an objection): extract the "
            "permit again from the current snapshot",
            table=table,
        )
    row_filter = In(PLATFORM_COLUMN, set(permit.platforms))
    date_col = DATE_COLUMNS.get(table)
    if date_col is not None and spec.has(date_col):
        row_filter = And(
            row_filter,
            And(
                GreaterThanOrEqual(date_col, permit.cohort.period.start.isoformat()),
                LessThan(date_col, permit.cohort.period.end.isoformat()),
            ),
        )
    fields = tuple(dict.fromkeys([*cols, "person_id"])) if spec.has("person_id") else tuple(cols)
    scan = tbl_ice.scan(row_filter=row_filter or AlwaysTrue(), selected_fields=fields, snapshot_id=snap)
    bound = sum(task.file.record_count for task in scan.plan_files())
    schema = pa.schema([pa.field(c, spec.column(c).arrow_type) for c in cols])

    def batches() -> Iterator[pa.Table]:
        for rb in scan.to_arrow_batch_reader():  # streamed: only the cohort's rows are kept
            t = pa.Table.from_batches([rb])
            if "person_id" in t.column_names:
                t = t.filter(pc.is_in(t.column("person_id"), value_set=persons))
            if t.num_rows:
                yield t.select(cols).cast(schema)

    return batches(), bound


def sort_keys(table: str, columns: Sequence[str]) -> list[str]:
    """The dataset's row order: the (re-keyed) primary key, then every column."""
    spec = omop.table(table)
    keys = [c for c in ([spec.primary_key] if spec.primary_key else []) if c in columns]
    return keys + [c for c in columns if c not in keys]


def write_sorted(
    batches: Iterable[pa.Table],
    schema: pa.Schema,
    keys: Sequence[str],
    path: Path,
    *,
    bound: int,
    per_bucket: Callable[[pa.Table], pa.Table] | None = None,
    sort_rows: int = SORT_ROWS,
) -> int:
    """Write `batches` to the Parquet file `path` sorted on `keys`, in bounded memory: rows are spilled (Arrow IPC,
    beside `path`) into buckets of disjoint ranges of the first key (a re-keyed id: uniform over 63 bits), as many
    buckets as `bound` (an upper bound of the rows) needs for `sort_rows` rows each; each bucket is then sorted
    alone and appended in range order, so the file is the whole sort. The bucket count depends only on `bound`:
    the same rows give the same bytes. `per_bucket` (PERSON's one row per person) sees one sorted bucket; equal
    first keys are always in one bucket. Returns the rows written."""
    first = keys[0] if keys else None
    n_buckets = 1
    if first is not None and pa.types.is_integer(schema.field(first).type):
        n_buckets = max(1, -(-bound // sort_rows))
    step = -(-ID_SPACE // n_buckets)
    spill = [path.with_name(f"{path.name}.bucket{i:06d}.arrow") for i in range(n_buckets)]
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    try:
        for t in batches:
            if n_buckets == 1:
                ids = pa.array(np.zeros(t.num_rows, np.int64))
            else:
                col = pc.fill_null(t.column(first), ID_SPACE - 1)
                ids = pc.min_element_wise(pc.divide(pc.max_element_wise(col, 0), step), n_buckets - 1)
            for b in pc.unique(ids).to_pylist():
                part = t.filter(pc.equal(ids, b)) if n_buckets > 1 else t
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(spill[b]), schema)
                writers[b].write_table(part)
        for w in writers.values():
            w.close()
        rows = 0
        with pq.ParquetWriter(str(path), schema, **PARQUET_OPTIONS) as out:
            for b in range(n_buckets):
                if b not in writers:
                    continue
                with pa.ipc.open_stream(str(spill[b])) as r:
                    part = r.read_all()
                spill[b].unlink()
                part = part.sort_by([(c, "ascending") for c in keys]) if part.num_rows else part
                if per_bucket is not None:
                    part = per_bucket(part)
                out.write_table(part, row_group_size=ROW_GROUP)
                rows += part.num_rows
            if rows == 0:
                out.write_table(schema.empty_table())
        return rows
    finally:
        for w in writers.values():
            try:
                w.close()
            except (OSError, ValueError, pa.ArrowInvalid):
                pass
        for f in spill:
            f.unlink(missing_ok=True)


def one_row_per_person(tbl: pa.Table) -> pa.Table:
    """PERSON has one row per platform that knows the patient in the national tables: the project gets one row per
    person (the first of the sorted rows: deterministic)."""
    if tbl.num_rows < 2 or "person_id" not in tbl.column_names:
        return tbl
    ids = tbl.column("person_id").combine_chunks()
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return tbl.filter(keep)


PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "data_page_version": "1.0",
}


def dictionary(permit: Permit) -> dict:
    doc = {}
    for t in sorted(permit.tables):
        spec = omop.table(t)
        cols = []
        for c in spec.columns:
            if c.name not in set(permit.tables[t]):
                continue
            role = "project pseudonym" if c.name == "person_id" else ("project row id" if c.is_id else "value")
            if c.name.endswith("concept_id"):
                role = "OMOP standard concept id"
            cols.append({"column": c.name, "omop_type": c.datatype, "required": c.required, "role": role})
        doc[t] = cols
    return {"kind": "eds-network/project-data-dictionary", "cdm": "OMOP CDM 5.4", "tables": doc}


def extract(
    catalog: SqlCatalog,
    s3,
    bucket: str,
    permit: Permit,
    pins: Mapping[str, int],
    *,
    national_secret: bytes,
    signing_key: bytes,
    key_id: str,
    quality: Mapping[str, object] | None = None,
) -> Dataset:
    """Extract, pseudonymise, write and sign one project dataset (idempotent: same permit + pins = same files)."""
    check_permit(permit)
    pins = {t: int(s) for t, s in sorted(pins.items())}
    key = project_key(national_secret, permit.project_id)
    matched = cohort_persons(catalog, permit.cohort, pins, platforms=permit.platforms)[NETWORK]
    persons = pa.array(sorted(matched), pa.int64())
    with tempfile.TemporaryDirectory(prefix="eds-project-") as tmp:
        return _extract_into(Path(tmp), catalog, s3, bucket, permit, pins, persons, key, signing_key, key_id, quality)


def _write_tables(
    tmp: Path, catalog: SqlCatalog, permit: Permit, pins: Mapping[str, int], persons: pa.Array, key: bytes
) -> tuple[dict[str, Path], dict[str, int]]:
    """Each permitted table of the cohort, re-keyed and sorted into a Parquet file under `tmp` in bounded memory:
    ({file name: path}, {table: rows})."""
    files: dict[str, Path] = {}
    rows: dict[str, int] = {}
    for t in sorted(permit.tables):
        if t not in pins:
            raise IntegrityError(f"permit {permit.permit_reference}: no national table (no pin)", table=t)
        batches, bound = _scan_batches(catalog, t, pins, permit, persons)
        spec = omop.table(t)
        cols = [c for c in spec.column_names if c in set(permit.tables[t])]
        schema = pa.schema([pa.field(c, spec.column(c).arrow_type) for c in cols])
        path = tmp / f"{t}.parquet"
        rows[t] = write_sorted(
            (rekey_ids(b, t, key) for b in batches),
            schema,
            sort_keys(t, cols),
            path,
            bound=bound,
            per_bucket=one_row_per_person if t == "person" else None,
        )
        files[path.name] = path
    return files, rows


def _extract_into(
    tmp: Path,
    catalog: SqlCatalog,
    s3,
    bucket: str,
    permit: Permit,
    pins: Mapping[str, int],
    persons: pa.Array,
    key: bytes,
    signing_key: bytes,
    key_id: str,
    quality: Mapping[str, object] | None,
) -> Dataset:
    files, rows = _write_tables(tmp, catalog, permit, pins, persons, key)
    docs = {
        "dictionary.json": dictionary(permit),
        "quality.json": {"kind": "eds-network/project-quality", "bases": quality or {}},
    }
    for name, d in docs.items():
        (tmp / name).write_bytes(json.dumps(d, indent=1, sort_keys=True, default=str).encode())
        files[name] = tmp / name
    sha = {name: sha256_file(f) for name, f in sorted(files.items())}
    size = {name: f.stat().st_size for name, f in files.items()}
    digest = hashlib.sha256("|".join(f"{n}:{h}" for n, h in sha.items()).encode()).hexdigest()
    extract_id = f"{permit.project_id}__{digest[:16]}"
    prefix = f"{area_prefix(permit.project_id)}{extract_id}/"
    doc = {
        "kind": "eds-network/project-dataset",
        "project": permit.project_id,
        "permit": permit.permit_reference,
        "extract_id": extract_id,
        "pins": pins,
        "cohort": json.loads(permit.cohort.model_dump_json()),
        "platforms": sorted(permit.platforms),
        "persons": len(persons),
        "pseudonyms": "HKDF-SHA-256(national key, project id) -> keyed 63-bit permutation (core.rowids)",
        "files": [
            {
                "name": n,
                "key": prefix + n,
                "sha256": h,
                "bytes": size[n],
                "rows": rows.get(n[: -len(".parquet")]),
            }
            for n, h in sha.items()
        ],
    }
    manifest = json.dumps(sign_document(doc, signing_key, key_id), indent=1, sort_keys=True).encode()
    out = Dataset(
        project_id=permit.project_id,
        extract_id=extract_id,
        prefix=prefix,
        pins=dict(pins),
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        files=len(files),
        bytes=sum(size.values()) + len(manifest),
        rows=rows,
        persons=len(persons),
        sha256=sha,
    )
    if prefix + MANIFEST in set(list_keys(s3, bucket, prefix)):
        out.status = "already_delivered"
        log.info("project %s: dataset %s is already in its area: nothing written", permit.project_id, extract_id)
        return out
    _write_area(s3, bucket, prefix, files, sha, size, manifest)
    log.info(
        "project %s: dataset %s written: %d persons, %s, %.1f kB",
        permit.project_id,
        extract_id,
        len(persons),
        ", ".join(f"{t}={n}" for t, n in rows.items()),
        out.bytes / 1e3,
    )
    return out


def _write_area(
    s3, bucket: str, prefix: str, files: Mapping[str, Path], sha: Mapping[str, str], size: Mapping[str, int], manifest
) -> None:
    """Every file streamed from disk into the area, each object verified (SHA-256, size), the manifest last."""
    for name, f in files.items():
        with open(f, "rb") as body:  # streamed from disk (boto3 sends the file object)
            s3.put_object(Bucket=bucket, Key=prefix + name, Body=body)
    for name, h in sha.items():  # verify every object before the manifest
        got, n = sha256_object(s3, bucket, prefix + name)
        if got != h or n != size[name]:
            raise IntegrityError(f"project area object {prefix + name} does not match what was written")
    s3.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=manifest, ContentType="application/json")


def delete_area(s3, bucket: str, project_id: str) -> dict[str, int]:
    """Delete every object of the project's area (expiry, closure); count what is left (must be 0)."""
    return delete_prefix_checked(s3, bucket, area_prefix(project_id))


def delete_prefix_checked(s3, bucket: str, prefix: str) -> dict[str, int]:
    """Delete every object under `prefix`, then list it again: an object left is an error."""
    if not prefix.startswith(AREA_ROOT):
        raise IntegrityError(f"refusing to delete {prefix!r}: not a project area")
    keys = list_keys(s3, bucket, prefix)
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True})
    left = len(list_keys(s3, bucket, prefix))
    if left:
        raise IntegrityError(f"{left} objects still under {prefix} after deletion")
    return {"objects_deleted": len(keys), "objects_left": left}


def dataset_persons(s3, bucket: str, prefix: str) -> set[int]:
    """The project pseudonyms a delivered dataset holds (from its person file, else from any table's person_id)."""
    keys = [k for k in list_keys(s3, bucket, prefix) if k.endswith(".parquet")]
    keys.sort(key=lambda k: not k.endswith("/person.parquet"))
    out: set[int] = set()
    for k in keys:
        body = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        schema = pq.read_schema(io.BytesIO(body))
        if "person_id" in schema.names:
            out |= set(pq.read_table(io.BytesIO(body), columns=["person_id"]).column("person_id").to_pylist())
            if k.endswith("/person.parquet"):
                break
    return out


def project_pseudonyms(national_ids: Sequence[int], national_secret: bytes, project_id: str) -> set[int]:
    """National person ids -> the project's pseudonyms of them (for withdrawal notices)."""
    key = project_key(national_secret, project_id)
    return set(rowids.rekey(pa.array(list(national_ids), pa.int64()), key, PERSON_DOMAIN).to_pylist())
