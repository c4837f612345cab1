"""Per-request records: one row per request in ``requests.parquet``, a folder of part files.

A part is written to a hidden temporary name and renamed when complete, so the folder is readable at any moment (readers
skip names starting with ``.``) and a killed load process loses at most the rows since its last flush (``FLUSH_S``).
A part that cannot be written (a full or read-only disk) leaves no temporary file behind; the parts written before it
stay, and the load process is stopped (as by SIGTERM) with :class:`RecordsWriteError` naming the folder.

In the hot path a row is packed into a bytearray (``ROW``: numbers, and codes for the strings), which costs no Python
object per request (nothing for the garbage collector to walk) and turns into columns at a flush without a loop over
rows. Parts are written ``ROW_GROUP_ROWS`` rows at a time with the event loop let run in between, so a flush never holds
the loop for long, which would show as schedule lag: against a null server at 6,000 req/s, flushing 12,000 rows of
tuples in slices of 1,000 with parquet's default settings held the loop ~3 ms at a time and put the lag p99 at 4 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np

FLUSH_S = 2.0
ROW_GROUP_ROWS = 1024  # rows per parquet row group (~0.3 ms to encode on a 2020s server core)
# LZ4 and dictionaries for the strings only: ~4x faster to encode than parquet's default (snappy, dictionaries for
# every column) for about the same size (~28 bytes a row), which matters because it runs on the load's event loop
WRITE_OPTIONS = {"compression": "lz4", "use_dictionary": ["workload", "phase", "error", "replica"]}

COLUMNS = {  # name -> meaning [unit]
    "workload": "served workload",
    "phase": "'warmup' or 'step'",
    "step": "index of the load step or stage (-1 for warm-up)",
    "level": "concurrency [users], arrival rate [req/s] or requests queued at once, when the request was scheduled",
    "scheduled_ns": "when the request was due (monotonic) [ns]",
    "sent_ns": "when it was handed to a connection (0: never sent) [ns]",
    "first_byte_ns": "when the first byte of the answer arrived (0: no answer) [ns]",
    "done_ns": "when the answer (or error) was complete [ns]",
    "status": "HTTP status, 0 when there was no answer",
    "error": "'' when ok, else the kind: timeout, connect, reset, http_4xx, http_5xx, cancelled, other",
    "bytes_out": "request body size [bytes]",
    "bytes_in": "response body size [bytes]",
    "items": "inputs in the request (its first dimension)",
    "batch_size": "items in the server's batch (server-reported, -1 unknown)",
    "server_queue_ns": "server: arrival to batch start [ns] (-1 unknown)",
    "server_compute_ns": "server: forward pass of the batch [ns] (-1 unknown)",
    "server_decode_ns": "server: arrival to enqueued: body, parsing, decoding (JPEG, text, audio) [ns] (-1 unknown)",
    "truncated": "items whose output was cut at a limit, Whisper's decode_tokens (server-reported; -1 unknown: other "
    "workloads, older servers; a records file without the column: unknown)",
    "replica": "address of the replica that got it",
    "process": "index of the load process that sent it",
}
ERROR_KINDS = ("timeout", "connect", "reset", "http_4xx", "http_5xx", "other")  # plus 'cancelled' (in flight at a stop)
PHASES = ("warmup", "step")
ERRORS = ("", *ERROR_KINDS, "cancelled", "http_1xx", "http_3xx")
ERROR_CODE = {kind: code for code, kind in enumerate(ERRORS)}
_STRINGS = {"workload", "phase", "error", "replica"}
_PACKED = (  # what ROW holds, in order: (column, struct code); workload and process are the recorder's own
    ("phase", "b"),
    ("step", "i"),
    ("level", "d"),
    ("scheduled_ns", "q"),
    ("sent_ns", "q"),
    ("first_byte_ns", "q"),
    ("done_ns", "q"),
    ("status", "i"),
    ("error", "b"),
    ("bytes_out", "q"),
    ("bytes_in", "q"),
    ("items", "i"),
    ("batch_size", "q"),
    ("server_queue_ns", "q"),
    ("server_compute_ns", "q"),
    ("server_decode_ns", "q"),
    ("truncated", "i"),
    ("replica", "h"),
)
ROW = struct.Struct("<" + "".join(code for _, code in _PACKED))
_DTYPE = np.dtype([(name, "<" + code) for name, code in _PACKED])


class RecordsWriteError(OSError):
    """A part file that could not be written; the message names it, the reason and how many rows were lost."""


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(name, pa.string() if name in _STRINGS else pa.float64() if name == "level" else pa.int64())
            for name in COLUMNS
        ]
    )


class Recorder:
    """Collects packed rows (``buffer += ROW.pack(...)``: phase code, step, level, the four times, status, error code,
    bytes out and in, items, batch size, server queue, compute and decode times, truncated items, replica index) and
    writes them as
    part files ``<prefix>NNNNN.parquet``."""

    def __init__(self, out_dir: Path, prefix: str, workload: str, replicas: list[str], process: int):
        import pyarrow as pa

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.buffer = bytearray()
        self.parts = itertools.count(len(list(self.out_dir.glob(f"{prefix}*.parquet"))))
        self.written = 0
        self.lost = 0  # rows that could not be written
        self.error: RecordsWriteError | None = None  # the first part that could not be written
        self.process = process
        self._schema = schema()
        self._dictionaries = {
            "workload": pa.array([workload]),
            "phase": pa.array(PHASES),
            "error": pa.array(ERRORS),
            "replica": pa.array(replicas or [""]),
        }
        self._warm_up()

    @property
    def total(self) -> int:
        return self.written + len(self.buffer) // ROW.size

    def _table(self, data: bytes, start: int, stop: int):
        """Rows ``start:stop`` of packed ``data`` as an Arrow table."""
        import pyarrow as pa

        rows = np.frombuffer(data, _DTYPE, count=stop - start, offset=start * ROW.size)
        arrays = []
        for field in self._schema:
            name = field.name
            if name == "workload":
                codes = np.zeros(len(rows), np.int8)
            elif name == "process":
                arrays.append(pa.array(np.full(len(rows), self.process, np.int64)))
                continue
            else:
                codes = rows[name]
            if name in _STRINGS:
                arrays.append(
                    pa.DictionaryArray.from_arrays(pa.array(codes), self._dictionaries[name]).dictionary_decode()
                )
            else:
                arrays.append(pa.array(codes.astype(np.float64 if name == "level" else np.int64)))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    def _take(self) -> bytes:
        data = bytes(self.buffer)  # the same bytearray stays in use: the load process appends to it directly
        del self.buffer[: len(data)]
        return data

    def _names(self) -> tuple[Path, Path]:
        final = self.out_dir / f"{self.prefix}{next(self.parts):05d}.parquet"
        return final, final.with_name(f".{final.name}.tmp")  # hidden: dataset readers skip it

    def _open(self, tmp: Path):
        import pyarrow.parquet as pq

        return pq.ParquetWriter(tmp, self._schema, **WRITE_OPTIONS)

    def _warm_up(self) -> None:
        """Write one row to memory: the writer's first use loads libraries and codecs (tens of ms), which would
        otherwise stall the load at its first flush."""
        import pyarrow.parquet as pq

        data = ROW.pack(*([0] * len(_PACKED)))
        with pq.ParquetWriter(io.BytesIO(), self._schema, **WRITE_OPTIONS) as writer:
            writer.write_table(self._table(data, 0, 1))

    def _failed(self, tmp: Path, final: Path, count: int, exc: OSError) -> RecordsWriteError:
        """Remove the half-written part; the error to raise, naming the part and the rows lost."""
        with contextlib.suppress(OSError):
            tmp.unlink()
        self.lost += count
        return RecordsWriteError(
            exc.errno,
            f"cannot write request records to {final}: {exc.strerror or exc} ({count} rows lost; "
            f"{self.written} rows in earlier parts are kept)",
        )

    def flush(self) -> None:
        """Write what was collected as one part (blocking); :class:`RecordsWriteError` if it cannot be written, or if
        an earlier part could not be (the load's last flush: the process then ends with that error)."""
        data = self._take()
        count = len(data) // ROW.size
        if not count:
            if self.error is not None:
                raise self.error
            return
        final, tmp = self._names()
        try:
            writer = self._open(tmp)
            with writer:
                for start in range(0, count, ROW_GROUP_ROWS):
                    writer.write_table(self._table(data, start, min(start + ROW_GROUP_ROWS, count)))
            os.replace(tmp, final)  # a part is either complete or absent
        except OSError as exc:
            raise self._failed(tmp, final, count, exc) from exc
        self.written += count
        if self.error is not None:
            raise self.error

    async def flush_async(self) -> None:
        """:meth:`flush`, one row group at a time, letting the event loop run between them."""
        data = self._take()
        count = len(data) // ROW.size
        if not count:
            return
        final, tmp = self._names()
        cancelled = False
        try:
            writer = self._open(tmp)
            with writer:
                for start in range(0, count, ROW_GROUP_ROWS):
                    writer.write_table(self._table(data, start, min(start + ROW_GROUP_ROWS, count)))
                    if not cancelled:
                        try:
                            await asyncio.sleep(0)
                        except asyncio.CancelledError:  # finish this part first: its rows exist nowhere else
                            cancelled = True
            os.replace(tmp, final)
        except OSError as exc:
            raise self._failed(tmp, final, count, exc) from exc
        self.written += count
        if cancelled:
            raise asyncio.CancelledError

    async def flush_every(self, seconds: float = FLUSH_S) -> None:
        """Flush every ``seconds`` until cancelled. A part that cannot be written stops the load process (SIGTERM to
        itself: the load stops as at a stop signal, and its last flush raises the error again if the disk is still
        full): measuring on without keeping the rows would be pointless."""
        next_at = time.monotonic() + seconds
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += seconds
            try:
                await self.flush_async()
            except RecordsWriteError as exc:
                self.error = exc
                print(f"gawm load: {exc}; stopping the load", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return
