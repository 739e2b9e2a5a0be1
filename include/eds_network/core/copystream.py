"""Stream any PostgreSQL SELECT as Arrow record batches, through `COPY (…) TO STDOUT (FORMAT csv)`.

Used by every zone that reads a PostgreSQL database in bulk: the hospital's extraction, the platform's
package, the quality references. A reader thread drains the COPY into blocks of whole rows of about
COPY_BLOCK bytes (`_copy_blocks`), and each block is parsed in place into one record batch. Memory is bounded
by COPY_BLOCKS_AHEAD blocks whatever the size of the result. Conversion errors name the table and column, never
the value.
"""

from __future__ import annotations

import queue
import re
import select
import threading
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.pq import ExecStatus

from eds_network.core.errors import SourceError

# Size of one block of COPY rows, hence of one record batch (4 MiB of CSV ~ 37k MEASUREMENT rows): larger
# batches spread per-batch costs, smaller ones hold less memory (measurements in BENCHMARKS.md).
COPY_BLOCK = 4 << 20
COPY_BLOCKS_AHEAD = 2


COPY_BLOCKS_AHEAD = 2


def _copy_blocks(copy: psycopg.Copy) -> Iterator[bytearray]:
    """The rows of a started `COPY … TO STDOUT`, in blocks of about COPY_BLOCK bytes.

    Reads libpq's buffer directly (`PQgetCopyData` without blocking) and waits on the socket only when the
    buffer is empty: psycopg's `for row in copy` runs a generator and a wait loop per row (about twice the
    CPU, all of it under the GIL the checks and pseudonymisation need), and a blocking `PQgetCopyData` would
    hold the GIL while it waits for the server. `bytearray +=` copies each row once (cheaper than a
    `b"".join` of row memoryviews; figures in BENCHMARKS.md). The COPY's final result is read here, so
    the `Copy` block exits with nothing left to consume; a server error raises psycopg's error for it.
    """
    pg = copy.connection.pgconn
    get = pg.get_copy_data
    poll = select.poll()
    poll.register(pg.socket, select.POLLIN)
    block = bytearray()
    while True:
        n, row = get(1)
        if n > 0:
            block += row
            if len(block) >= COPY_BLOCK:
                yield block
                block = bytearray()
        elif n == 0:  # libpq's buffer is empty: wait for the server (the GIL is released in poll)
            poll.poll()
            pg.consume_input()
        else:  # -1: the COPY is over; its result (COMMAND_OK, or the server's error) follows
            break
    while pg.is_busy():
        poll.poll()
        pg.consume_input()
    result = pg.get_result()
    while pg.get_result() is not None:
        pass
    if result is None:
        raise psycopg.OperationalError("COPY ended without a result")
    if result.status != ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(result, encoding=copy.connection.info.encoding)
    if block:
        yield block


_DONE = object()


def prefetch(items: Iterator, depth: int, name: str) -> Iterator:
    """Iterate `items` in a thread of its own, at most `depth` items ahead; its errors are raised here.

    Closing this generator (or an error here) stops the thread and waits for it, then closes `items` on the
    calling thread: a COPY left half-read is finished by the thread that opened it.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _DONE))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


def stream_query(
    conn: psycopg.Connection, query: sql.Composable, columns: list[str], types: dict[str, pa.DataType], *, table: str
) -> Iterator[pa.RecordBatch]:
    """Stream any SELECT as Arrow record batches through COPY … TO STDOUT (FORMAT csv), one per COPY block."""
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        blocks = prefetch(_copy_blocks(copy), COPY_BLOCKS_AHEAD, f"eds-copy-{table}")
        try:
            for block in blocks:
                yield _parse_block(block, columns, types, table)
        finally:
            blocks.close()  # stops the reader thread before the COPY is finished or abandoned


def _parse_block(block: bytearray, columns: list[str], types: dict[str, pa.DataType], table: str) -> pa.RecordBatch:
    """One block of whole COPY rows (each COPY message is one row) -> one record batch, parsed in place.

    No file object in between: pyarrow reads the bytearray without a copy. An empty interval gives no block
    at all (pyarrow would refuse an empty CSV).
    """
    try:
        parsed = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=columns, block_size=len(block) + 1, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise _conversion_error(exc, columns, table) from None
    batches = parsed.to_batches()
    return batches[0] if len(batches) == 1 else parsed.combine_chunks().to_batches()[0]


_ARROW_COLUMN = re.compile(r"In CSV column #(\d+):\s*")


_QUOTED = re.compile(r"'.*'", re.DOTALL)


def _conversion_error(exc: pa.ArrowInvalid, columns: list[str], table: str) -> SourceError:
    """A SourceError naming the column Arrow could not convert, without the offending value.

    Arrow's message names the column by position and quotes the value ("In CSV column #3: CSV conversion
    error to timestamp[us]: expected no zone offset in '2021-03-04 10:00:00+00'"): the value may be patient
    data, so it is cut, and the position is turned into the column name.
    """
    first = str(exc).split("\n")[0]
    column = None
    m = _ARROW_COLUMN.search(first)
    if m:
        i = int(m.group(1))
        column = columns[i] if i < len(columns) else None
        first = first[: m.start()] + first[m.end() :]
    detail = _QUOTED.sub("<value withheld>", first).strip()[:300]
    return SourceError(f"value does not fit the OMOP type: {detail}", table=table, column=column)
