"""Load generator for any Open Inference Protocol v2 server (ours, Triton, KServe): it knows server addresses, a model
name and request bodies to sample from, nothing about models.

It runs in its own process(es) (``python -m gawm_lib.loadgen SPEC.json``), never inside a Jupyter kernel:
:func:`run_load` checks the settings (nothing is sent if they are wrong), starts ``load.processes`` load processes,
shows a progress bar and returns when they are done. Each request becomes one row of ``requests.parquet`` (``COLUMNS``;
a folder of part files flushed every ``FLUSH_S`` seconds, each complete on its own, so a crash loses at most that
window), whatever happens to it: ok, failed by kind (timeout, connect, reset, http_4xx, http_5xx, other) or cancelled
at a stop.

Scenarios (``gawm_lib.config.LoadConfig``): single_stream, closed_loop (with think time), poisson, constant_rate,
offline, stages (steps and ramps of users or rates) and trace replay. Timing: monotonic nanosecond clocks; open-loop
requests keep the time they were *scheduled* as well as sent, so latency counts from the schedule (no coordinated
omission) and schedule lag (sent - scheduled) is kept. One wall-clock anchor per run (``anchor_unix_ns`` /
``anchor_monotonic_ns``) maps monotonic times to UTC for aligning with Prometheus.

HTTP: gawm's own HTTP/1.1 client (``http1``, the default ``load.transport``: keep-alive connections, requests built
once as bytes, ~40,000 req/s on one core against a null server, where aiohttp does ~6,000-10,000 and httpx ~450), or
aiohttp (``transport: aiohttp``). ``python -m gawm_lib.bench.loadgen_bench`` measures the generator against Locust.

Modules: ``schedule`` (steps and arrival times), ``http1`` (the HTTP client), ``client`` (error kinds, bodies, the
aiohttp session), ``records`` (part files), ``engine`` (the load process), ``runner`` (the caller's side), ``spec``.
"""

from gawm_lib.loadgen.records import COLUMNS, ERROR_KINDS, FLUSH_S
from gawm_lib.loadgen.runner import LoadError, check, merge_results, run_load, write_bodies
from gawm_lib.loadgen.spec import LoadSpec

__all__ = [
    "COLUMNS",
    "ERROR_KINDS",
    "FLUSH_S",
    "LoadError",
    "LoadSpec",
    "check",
    "merge_results",
    "run_load",
    "write_bodies",
]
