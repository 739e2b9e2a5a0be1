"""Leak scan: look for the hospitals' direct identifiers in everything the network writes outside the hospitals.

What is looked for: every value of the hospitals' identity registries (`identity.patient` of each source):
NIR (with and without its key; compact, spaced, dotted or dashed), IPP, surnames whatever their length (a
surname under 5 letters, "Li", "Roy", as a whole token written as a name is: as stored, Capitalised or UPPER,
since "li" is also an HTML tag), first names of 5 characters or more (shorter ones are ordinary words), postal
address, phone (as stored, digits only, +33 / 0033 forms, dotted or dashed), e-mail. Full birth dates are not
looked for: a date of birth is also an ordinary clinical date, and the year of birth is published by design.

Where: every object of the platform intakes and outboxes and of the HDH landing zone (Parquet decoded), every
table of the platform warehouses, of the HDH's database (national tables' catalog, person-digest registry) and
of the catalogue, every table of Airflow's metadata database (XCom, rendered template fields, `dag_run.conf`,
…), every file of the state folder (task logs, quality data docs) except the PostgreSQL cluster and the
secrets, the PostgreSQL server's own log (an error there can quote a statement's data), and the night's
summary text.

Matching is on tokens (case-folded words, numbers, e-mail addresses), a multi-word value (address, spaced
phone) matching as a sequence of tokens; so an IPP does not match inside a longer number or a checksum.
A hit names the place and the kind of identifier, never the value. Memory stays bounded: tables are read
with COPY, objects and files by chunks, Parquet by row group.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from psycopg import sql

from eds_network.core.textmatch import EDGE, fold, raw_tokens, tokens

CHUNK = 1 << 20  # characters of text scanned at once
MIN_NAME = 5  # first names shorter than this are ordinary words; surnames are looked for whatever their length
KINDS = ("nir", "ipp", "last_name", "first_name", "address", "phone", "email")
_EDGE = EDGE


def _norm(text: str) -> str:
    return fold(text)


def _raw_tokens(text: str) -> list[str]:
    """`text` already normalised (`_norm`)."""
    return raw_tokens(text)


@dataclass(frozen=True)
class Hit:
    """One identifier kind found in one place. Never carries the value."""

    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}"


_DIGIT_RUN = re.compile(r"(?<![0-9a-z])[0-9]{1,4}(?: [0-9]{1,3}){2,}(?![0-9a-z])")
_SEPARATED = re.compile(r"^[0-9ab]+(?:[.-][0-9ab]+){2,}$")  # 06.12.34.56.78, 1-85-05-75-056-012-05, 2A.04…


# Standard base64 (sealed tokens, signatures): its "/" cuts random letters into tokens, "Li" or "ROY" among them
# now and then; a run of 24+ base64 characters holding a "/" is no text a person wrote.
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+]*/)[A-Za-z0-9+/]{24,}={0,2}")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _textual(text: str) -> bool:
    """Text, not binary decoded with replacement (fonts, images): no NUL, under 1% replacement characters."""
    return "\x00" not in text and text.count("\ufffd") * 100 <= len(text)


def _digit_runs(text: str) -> set[str]:
    """Numbers written in groups ("06 12 34 56 78", "+33 (0)6 12 …", "1 85 05 …"): every contiguous part of 4+
    groups, joined."""
    out = set()
    if "(0)" in text:
        text = text.replace("(0)", "")
    for m in _DIGIT_RUN.finditer(text):
        g = m.group(0).split(" ")
        out.update("".join(g[i:j]) for i in range(len(g)) for j in range(i + 4, len(g) + 1))
    return out


class Identifiers:
    """The values to look for. Single-token values (and grouped numbers, compacted) are found by set lookups;
    multi-word values (addresses) by their rarest word, then as a token sequence."""

    def __init__(self, values: dict[str, Iterable[str]]):
        self._single: dict[str, str] = {}  # token -> kind
        multi: list[tuple[list[str], str]] = []
        short: set[str] = set()
        self.counts: dict[str, int] = {}
        for kind, vs in values.items():
            n = 0
            for v in vs:
                if kind == "last_name" and 0 < len(v.strip()) < MIN_NAME and len(tokens(v)) == 1:
                    cased = tokens(v, lower=False)[0]
                    short.update({cased, cased.capitalize(), cased.upper()})
                    n += 1
                    continue
                for variant in _variants(kind, v):
                    toks = tokens(variant)
                    if all(t.isdigit() for t in toks):
                        toks = ["".join(toks)] if toks else []
                    if len(toks) == 1:
                        self._single.setdefault(toks[0], kind)
                    elif toks:
                        multi.append((toks, kind))
                    n += bool(toks)
            self.counts[kind] = n
        freq: dict[str, int] = {}
        for toks, _ in multi:
            for t in set(toks):
                freq[t] = freq.get(t, 0) + 1
        self._multi: dict[str, list[tuple[frozenset[str], str, str]]] = {}
        for toks, kind in multi:
            rare = min(toks, key=lambda t: (freq[t], -len(t)))
            self._multi.setdefault(rare, []).append((frozenset(toks), " " + " ".join(toks) + " ", kind))
        self._single_keys = frozenset(self._single)
        self._multi_keys = frozenset(self._multi)
        # Short surnames ("Li", "Roy") are ordinary lower-case words too ("<li>" in every HTML page): they are
        # looked for as whole tokens written as a name is (as stored, Capitalised or UPPER), accents ignored.
        self._short_lower = frozenset(s.lower() for s in short)
        self._short = frozenset(short)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def kinds_in(self, text: str) -> set[str]:
        if "\\u" in text:  # JSON's escaped non-ASCII ("C\u00f4t\u00e9"): read as the characters they stand for
            text = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
        norm = _norm(text)
        toks = _raw_tokens(norm)
        present = set(toks)
        present |= {t.strip(_EDGE) for t in present if t[0] in _EDGE or t[-1] in _EDGE}
        present |= _digit_runs(norm)
        present |= {re.sub(r"[.-]", "", t) for t in present if t[:1].isdigit() and _SEPARATED.match(t)}
        found = {self._single[t] for t in present & self._single_keys}
        if (
            self._short
            and "last_name" not in found
            and not present.isdisjoint(self._short_lower)
            and _textual(text)  # two letters occur by chance in the bytes of a font or an image
        ):
            # ... and not as a piece of base64 ("…/Li/…" of a sealed token or a signature, 1 in ~10^7 places)
            cased = {t.strip(_EDGE) for t in _raw_tokens(fold(_BASE64_RUN.sub(" ", text), lower=False))}
            if not cased.isdisjoint(self._short):
                found.add("last_name")
        joined = None
        for rare in present & self._multi_keys:
            for need, seq, kind in self._multi[rare]:
                if kind in found or not need <= present:
                    continue
                if joined is None:
                    joined = " " + " ".join(t.strip(_EDGE) for t in toks) + " "
                if seq in joined:
                    found.add(kind)
        return found

    @classmethod
    def from_sources(cls, dsns: Iterable[str]) -> Identifiers:
        """Every identity value of the given hospital source databases (`identity.patient`)."""
        values: dict[str, set[str]] = {k: set() for k in KINDS}
        for dsn in dsns:
            with psycopg.connect(dsn) as conn:
                have = {
                    r[0]
                    for r in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = 'identity' AND table_name = 'patient'"
                    )
                }
                cols = [k for k in KINDS if k in have]
                if not cols:
                    continue
                q = sql.SQL("SELECT {} FROM identity.patient").format(sql.SQL(", ").join(map(sql.Identifier, cols)))
                with conn.cursor(name="leakscan_ids") as cur:
                    cur.itersize = 10_000
                    for row in cur.execute(q):
                        for k, v in zip(cols, row, strict=True):
                            if v is not None and str(v).strip():
                                values[k].add(str(v))
        return cls(values)


def _variants(kind: str, value: str) -> list[str]:
    value = value.strip()
    if kind == "first_name":
        return [value] if len(value) >= MIN_NAME else []
    if kind == "last_name":
        return [value]  # every length: the short ones are matched by their written case (`Identifiers`)
    if kind == "nir":
        compact = re.sub(r"[ .\-]", "", value)
        groups = [compact[0:1], compact[1:3], compact[3:5], compact[5:7], compact[7:10], compact[10:13]]
        # with and without its key; spaces (dots and dashes are compacted by `kinds_in`)
        return [compact, " ".join([*groups, compact[13:15]]), compact[:13], " ".join(groups)]
    if kind == "phone":
        digits = re.sub(r"\D", "", value)
        if len(digits) < 8:
            return []
        out = [value, digits]
        if len(digits) == 10 and digits[0] == "0":  # +33 6 12 34 56 78, +33612345678, 0033 6 12 34 56 78
            out += ["33" + digits[1:], "0033" + digits[1:]]
        return out
    return [value]


@dataclass
class Report:
    """What was scanned (places and characters per area) and what was found."""

    hits: list[Hit] = field(default_factory=list)
    places: dict[str, int] = field(default_factory=dict)
    chars: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.hits

    def text(self) -> str:
        lines = [
            f"{area:12s} {n:6d} places {self.chars.get(area, 0):14,d} characters" for area, n in self.places.items()
        ]
        lines.append(f"{len(self.hits)} hit(s)" + ("" if self.hits else ": no direct identifier found"))
        lines += [f"  {h}" for h in self.hits]
        return "\n".join(lines)


# A place to scan: (area, where, chunks of text).
Place = tuple[str, str, Iterable[str]]


def scan(places: Iterable[Place], ids: Identifiers) -> Report:
    """Scan every place; a hit per (place, kind). Chunks are scanned one by one (bounded memory)."""
    report = Report()
    for area, where, chunks in places:
        report.places[area] = report.places.get(area, 0) + 1
        found: set[str] = set()
        for chunk in chunks:
            report.chars[area] = report.chars.get(area, 0) + len(chunk)
            found |= ids.kinds_in(chunk)
        report.hits += [Hit(where, k) for k in sorted(found)]
    return report


# --------------------------------------------------------------------------------------------------
# Places


def _line_chunks(stream: Iterable[str]) -> Iterator[str]:
    """Re-chunk text pieces into ~CHUNK characters cut at line ends (a value never spans two chunks)."""
    buf: list[str] = []
    size = 0
    for piece in stream:
        buf.append(piece)
        size += len(piece)
        if size >= CHUNK:
            text = "".join(buf)
            cut = text.rfind("\n")
            if cut < 0:
                continue
            yield text[: cut + 1]
            buf, size = [text[cut + 1 :]], len(text) - cut - 1
    if buf:
        yield "".join(buf)


def _bytes_text(read) -> Iterator[str]:
    while data := read(CHUNK):
        yield data.decode("utf-8", "replace")


def parquet_text(source) -> Iterator[str]:
    """A Parquet file as CSV text, row group by row group."""
    pf = pq.ParquetFile(source)
    for rb in pf.iter_batches(batch_size=50_000):
        buf = io.BytesIO()
        pacsv.write_csv(pa.Table.from_batches([rb]), buf)
        yield buf.getvalue().decode("utf-8", "replace")


def s3_places(s3, bucket: str, prefix: str = "", area: str = "s3") -> Iterator[Place]:
    from eds_network.core.storage import list_keys

    for key in list_keys(s3, bucket, prefix):
        where = f"s3://{bucket}/{key}"
        try:
            obj = s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                continue  # deleted since the listing (a rerun replacing its batch)
            raise
        if key.endswith(".parquet"):
            body = obj["Body"].read()  # one file at a time; decoded row group by row group
            try:
                pq.ParquetFile(io.BytesIO(body))
            except (pa.ArrowInvalid, OSError):  # not readable as Parquet: scanned as bytes
                yield area, where, [body.decode("utf-8", "replace")]
                continue
            yield area, where, parquet_text(io.BytesIO(body))
        else:
            yield area, where, _line_chunks(_bytes_text(obj["Body"].read))


def _copy_text(dsn: str, schema: str, table: str) -> Iterator[str]:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        stmt = sql.SQL("COPY {}.{} TO STDOUT").format(sql.Identifier(schema), sql.Identifier(table))
        try:
            with cur.copy(stmt) as cp:
                yield from _line_chunks(bytes(c).decode("utf-8", "replace") for c in cp)
        except psycopg.errors.UndefinedTable:
            return  # dropped since the listing


def pg_places(dsn: str, label: str, area: str = "database", exclude_schemas: Iterable[str] = ()) -> Iterator[Place]:
    """Every ordinary table of a database (all user schemas but `exclude_schemas`)."""
    skip = {"pg_catalog", "information_schema", "pg_toast", *exclude_schemas}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "ORDER BY 1, 2"
        ).fetchall()
    for schema, table in tables:
        if schema in skip or schema.startswith("pg_temp"):
            continue
        yield area, f"{label}:{schema}.{table}", _copy_text(dsn, schema, table)


def file_places(root: Path, area: str = "files", skip_dirs: Iterable[Path] = ()) -> Iterator[Place]:
    """Every file under `root` (text or not: bytes decoded as UTF-8 with replacement), but under `skip_dirs`."""
    root = Path(root)
    skip = [Path(p).resolve() for p in skip_dirs]
    if not root.exists():
        return
    for path in sorted(root.rglob("*")):
        rp = path.resolve()
        if not path.is_file() or any(rp == s or s in rp.parents for s in skip):
            continue
        if path.suffix == ".parquet":
            yield area, str(path), parquet_text(path)
        else:
            yield area, str(path), _file_chunks(path)


def _file_chunks(path: Path) -> Iterator[str]:
    with open(path, "rb") as f:
        yield from _line_chunks(_bytes_text(f.read))


def text_place(where: str, text: str, area: str = "text") -> Place:
    return area, where, [text]


# --------------------------------------------------------------------------------------------------
# The embedded stack as a whole (what `eds leak-scan` runs)


def stack_places(stack, network, *, summary: str | None = None) -> Iterator[Place]:
    """Every output of a network night on the embedded stack."""
    s3 = stack.s3_client()
    buckets = sorted(
        {network.national.landing_zone.bucket}
        | {b for p in network.platforms for b in (p.intake.bucket, p.outbox.bucket)}
    )
    for b in buckets:
        yield from s3_places(s3, b, "", area="s3")
    for p in network.platforms:
        # `vocab`: the OMOP vocabulary loaded for standardisation: public reference text whose concept names
        # can match surnames; it holds no patient data.
        yield from pg_places(stack.dsn(f"wh_{p.id}"), f"wh_{p.id}", area="warehouse", exclude_schemas=["vocab"])
    yield from pg_places(stack.dsn("hdh"), "hdh", area="national_db")
    yield from pg_places(stack.dsn("catalogue"), "catalogue", area="catalogue")
    yield from pg_places(stack.dsn("airflow"), "airflow", area="airflow_db")
    yield from pg_log_places(stack)
    # The cluster's files hold the sources themselves; the secrets folder holds keys, not patient data.
    skip = [stack.pgdata, stack.secrets_dir, stack.pg_root / ".pg_password"]
    yield from file_places(stack.root, area="files", skip_dirs=skip)
    if summary is not None:
        yield text_place("summary", summary, area="summary")


def pg_log_places(stack, area: str = "pg_logs") -> Iterator[Place]:
    """The PostgreSQL server's logs: the file `pg_ctl -l` writes, and the collector's folder when it is on."""
    logs = [
        stack.pg_root / "postgres.log",
        *sorted((stack.pgdata / "log").glob("*")),
        *sorted((stack.pgdata / "pg_log").glob("*")),
    ]
    for path in logs:
        if path.is_file():
            yield area, str(path), _file_chunks(path)


def source_dsns(stack, network) -> list[str]:
    return [stack.dsn(f"src_{b.id}") for b in network.local_bases]


def scan_stack(stack, network, *, summary: str | None = None) -> tuple[Report, Identifiers]:
    ids = Identifiers.from_sources(source_dsns(stack, network))
    return scan(stack_places(stack, network, summary=summary), ids), ids


def report_json(report: Report) -> str:
    return json.dumps(
        {"hits": [{"where": h.where, "kind": h.kind} for h in report.hits], "places": report.places},
        indent=2,
        sort_keys=True,
    )
