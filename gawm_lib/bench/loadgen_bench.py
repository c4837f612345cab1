"""Benchmark of gawm's load generator against a null OIP v2 server on loopback, side by side with Locust.

``python -m gawm_lib.bench.loadgen_bench [--trial-s 3] [--out data/benchmarks/loadgen.json]`` measures, on this machine:

1. ``clients``: requests/s of the HTTP clients on one core, 16 requests in flight, back to back: httpx ``post``, httpx
   ``stream`` (what a first-byte time would need), aiohttp (gawm's ``transport: aiohttp``) and gawm's own ``http1``
   (the default transport);
2. ``overhead``: gawm's latency at a low constant rate (from the send and from the schedule) against a blocking raw
   socket client sending the same bytes at the same rate: what the generator adds to what it measures;
3. ``open_loop``: the highest Poisson arrival rate that one load process on one core sustains with schedule lag
   (send - due) p99 <= 1 ms, every request answered and >= 98 % of the offered rate sent; the same for Locust
   (FastHttpUser, with the same Poisson schedule built into its users, ``locust_driver``) on the same core; and for gawm
   with two processes on two cores;
4. ``closed_loop``: the most requests/s of 16 back-to-back users, gawm and Locust, for context.

The rate search doubles from ``--start-rps`` while trials pass, then bisects (on a log scale) between the last pass and
the first fail; a failing trial is run once more before it counts (a shared machine has hiccups). The null server is
pinned away from the generator's cores where there are enough of them (``setup`` records which). The result is appended
to ``--out`` (a list of runs, each with machine, load average, git commit and package versions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gawm_lib import paths, processes, runs
from gawm_lib.bench import null_server

SCHEMA_VERSION = 1
LAG_P99_LIMIT_MS = 1.0
ACHIEVED_MIN = 0.98
MIN_RPS = 50.0  # the search gives up below this
BODY = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["hello null server"]}]}
PACKAGES = ("aiohttp", "httpx", "locust", "gevent", "geventhttpclient", "numpy", "pyarrow", "pandas", "pydantic")


# -- where things run --------------------------------------------------------------------------------------------------
def _siblings(core: int) -> frozenset[int]:
    """The logical cores sharing ``core``'s physical core (hyperthreads), ``{core}`` where unknown."""
    path = Path(f"/sys/devices/system/cpu/cpu{core}/topology/thread_siblings_list")
    try:
        found: set[int] = set()
        for part in path.read_text().strip().split(","):
            low, _, high = part.partition("-")
            found.update(range(int(low), int(high or low) + 1))
        return frozenset(found)
    except (OSError, ValueError):
        return frozenset({core})


def plan_cores(cores: list[int]) -> dict[str, Any]:
    """Generator cores (one per load process) and null-server cores, on separate physical cores where there are
    enough of them (two hyperthreads of one core would slow each other)."""
    physical: dict[frozenset[int], list[int]] = {}
    for core in cores:
        physical.setdefault(_siblings(core), []).append(core)
    firsts = [group[0] for group in physical.values()]
    topology = sorted(sorted(group) for group in physical.values())
    if len(firsts) >= 3:
        return {
            "generator": firsts[:2],
            "server": firsts[2:6],
            "physical_cores": topology,
            "note": "generator processes and servers each on their own physical core",
        }
    if len(cores) >= 3:
        return {
            "generator": cores[:2],
            "server": cores[2:6],
            "physical_cores": topology,
            "note": "separate logical cores, some sharing a physical core",
        }
    if len(cores) == 2:
        return {
            "generator": cores,
            "server": cores[1:],
            "physical_cores": topology,
            "note": f"2 cores: one generator process on core {cores[0]}, server on {cores[1]}; the second "
            f"generator process shares core {cores[1]} with the server",
        }
    return {
        "generator": cores * 2,
        "server": cores,
        "physical_cores": topology,
        "note": "1 core: generator and server share it",
    }


@contextlib.contextmanager
def servers(cpus: list[int], log_dir: Path) -> Iterator[str]:
    """One null server process per core in ``cpus``, all on one port."""
    procs = []
    try:
        port = 0
        for i, cpu in enumerate(cpus):
            port_file = log_dir / f"port-{i}"
            procs.append(
                null_server.start(port, "null", [cpu], port_file, log_dir / f"server-{i}.log", reuse_port=len(cpus) > 1)
            )
            port = null_server.wait_for_port(procs[-1], port_file)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in procs:
            processes.stop(proc)


def _child(args: list[str], cpu: int, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m gawm_lib.bench.loadgen_bench --child ...`` pinned to ``cpu``; return its JSON line."""
    out = subprocess.run(
        [sys.executable, "-m", "gawm_lib.bench.loadgen_bench", "--child", *args, "--cpu", str(cpu)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- 1. HTTP clients ---------------------------------------------------------------------------------------------------
async def _client_rate(kind: str, url: str, seconds: float, concurrency: int = 16) -> float:
    body = json.dumps(BODY).encode()
    target = f"{url}/v2/models/null/infer"
    headers = {"content-type": "application/json"}
    count = 0
    end = time.monotonic() + seconds
    if kind.startswith("httpx"):
        import httpx

        session: Any = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024))

        async def one() -> None:
            nonlocal count
            while time.monotonic() < end:
                if kind == "httpx_post":
                    (await session.post(target, content=body, headers=headers)).read()
                else:
                    async with session.stream("POST", target, content=body, headers=headers) as answer:
                        time.monotonic_ns()  # the first byte
                        await answer.aread()
                count += 1
    elif kind == "gawm_http1":
        from gawm_lib.loadgen import http1

        session = http1.Pool(url, 10.0)
        data = http1.build_request(url, "/v2/models/null/infer", body)

        async def one() -> None:
            nonlocal count
            while time.monotonic() < end:
                await session.exchange(data, 10.0)
                count += 1
    else:
        from gawm_lib.loadgen import client

        session = client.session(concurrency, 10.0)

        async def one() -> None:
            nonlocal count
            while time.monotonic() < end:
                async with session.post(target, data=body, headers=headers) as answer:
                    time.monotonic_ns()
                    await answer.read()
                count += 1

    start = time.monotonic()
    await asyncio.gather(*[one() for _ in range(concurrency)])
    elapsed = time.monotonic() - start
    if kind.startswith("httpx"):
        await session.aclose()
    elif kind == "aiohttp":
        await session.close()
    else:
        session.close()
    return count / elapsed


# -- 2. overhead: a raw socket client ----------------------------------------------------------------------------------
def _raw_round_trips(url: str, rate: float, seconds: float) -> list[float]:
    """Round trips [ms] of a blocking keep-alive socket client sending one request every 1/rate s."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v2/models/null/infer HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    due = time.monotonic()
    for _ in range(int(rate * seconds)):
        due += 1 / rate
        while time.monotonic() < due:
            pass
        start = time.monotonic_ns()
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(rest) < length:
            rest += sock.recv(65536)
        times.append((time.monotonic_ns() - start) / 1e6)
    sock.close()
    return times


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("clients", "raw"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--cpu", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})
    if args.what == "clients":
        rates = {
            kind: asyncio.run(_client_rate(kind, args.url, args.seconds))
            for kind in ("httpx_post", "httpx_stream", "aiohttp", "gawm_http1")
        }
        print(json.dumps({f"{k}_rps": round(v, 1) for k, v in rates.items()}))
    else:
        _raw_round_trips(args.url, args.rate, 0.3)  # connect and warm up
        rtt = np.array(_raw_round_trips(args.url, args.rate, args.seconds))
        print(json.dumps({"rate_rps": args.rate, "requests": len(rtt), **_percentiles("rtt", rtt)}))


def _percentiles(name: str, values_ms: np.ndarray) -> dict[str, float]:
    return {
        f"{name}_p50_ms": round(float(np.percentile(values_ms, 50)), 4),
        f"{name}_p99_ms": round(float(np.percentile(values_ms, 99)), 4),
    }


# -- 3. gawm and Locust trials -----------------------------------------------------------------------------------------
def gawm_trial(url: str, load: dict[str, Any], work: Path) -> dict[str, Any]:
    """One run of gawm's load process(es); the measured step's rates, errors, lag and latency."""
    from gawm_lib import summary
    from gawm_lib.loadgen import LoadSpec, run_load, write_bodies

    work.mkdir(parents=True)
    bodies = write_bodies(work / "bodies.jsonl", [BODY])
    spec = LoadSpec("null", "null", [url], str(bodies), str(work / "requests.parquet"), load)
    run_load(spec, work, progress=False)
    rows = summary.read_requests(work / "requests.parquet")
    step = rows[rows["phase"] == "step"]
    ok = step[step["error"] == ""]
    return {
        "requests": len(step),
        "errors": int((step["error"] != "").sum()),
        "offered_rps": round(summary._rate(step["scheduled_ns"]), 1),
        "achieved_rps": round(summary._rate(step["sent_ns"][step["sent_ns"] > 0]), 1),
        "lag_p50_ms": round(float(step["lag_ms"].quantile(0.5)), 4),
        "lag_p99_ms": round(float(step["lag_ms"].quantile(0.99)), 4),
        "lag_max_ms": round(float(step["lag_ms"].max()), 3),
        "latency_p50_ms": round(float(ok["latency_ms"].quantile(0.5)), 4),
        "latency_p99_ms": round(float(ok["latency_ms"].quantile(0.99)), 4),
        "service_p50_ms": round(float(ok["service_ms"].quantile(0.5)), 4),
        "service_p99_ms": round(float(ok["service_ms"].quantile(0.99)), 4),
    }


def locust_trial(
    url: str,
    cpu: int,
    seconds: float,
    warmup_s: float,
    work: Path,
    mode: str = "open",
    rate: float = 0.0,
    users: int = 16,
) -> dict[str, Any]:
    work.mkdir(parents=True)
    out = work / "locust.json"
    cmd = [
        sys.executable,
        "-m",
        "gawm_lib.bench.locust_driver",
        "--url",
        url,
        "--mode",
        mode,
        "--rate",
        str(rate),
        "--users",
        str(users),
        "--seconds",
        str(seconds),
        "--warmup-s",
        str(warmup_s),
        "--cpu",
        str(cpu),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup_s + 120)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"locust failed:\n{done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def passes(trial: dict[str, Any], rate: float) -> bool:
    return bool(
        trial.get("requests", 0) > 0
        and trial["errors"] == 0
        and trial["lag_p99_ms"] <= LAG_P99_LIMIT_MS
        and trial["achieved_rps"] >= ACHIEVED_MIN * rate
    )


def search(
    trial: Callable[[float], dict[str, Any]],
    start_rps: float,
    max_rps: float,
    bisections: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The highest rate at which ``trial`` passes: doubling, then bisecting on a log scale."""
    trials: list[dict[str, Any]] = []

    def ok(rate: float) -> bool:
        for attempt in range(2):
            result = {"rate_rps": round(rate, 1), **trial(rate)}
            result["pass"] = passes(result, rate)
            trials.append(result)
            log(
                f"    {rate:9.0f} req/s: lag p99 {result.get('lag_p99_ms', float('nan')):8.3f} ms, achieved "
                f"{result.get('achieved_rps', 0):9.1f}, errors {result.get('errors')}: "
                f"{'pass' if result['pass'] else 'FAIL'}{' (retry)' if attempt else ''}"
            )
            if result["pass"]:
                return True
        return False

    low, high, rate = 0.0, math.inf, start_rps
    while rate <= max_rps:  # up while it passes
        if not ok(rate):
            high = rate
            break
        low, rate = rate, rate * 2
    while not low and high / 2 >= MIN_RPS:  # down until it passes, when even the start failed
        if ok(high / 2):
            low = high / 2
        else:
            high /= 2
    if low and high < math.inf:
        for _ in range(bisections):
            middle = math.sqrt(low * high)
            if ok(middle):
                low = middle
            else:
                high = middle
    return {
        "max_rate_rps": round(low, 1),
        "first_failing_rps": None if high == math.inf else round(high, 1),
        "trials": trials,
    }


# -- the whole benchmark -----------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    pressure = None
    with contextlib.suppress(OSError):
        pressure = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    return {**runs.host_info(), "load_average": os.getloadavg(), "cpu_pressure": pressure}


def versions() -> dict[str, str | None]:
    return {"python": sys.version.split()[0], **runs.package_versions(tuple(PACKAGES))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(line: str) -> None:
        print(line, flush=True)

    cores = sorted(os.sched_getaffinity(0))
    setup = plan_cores(cores)
    gen = setup["generator"]
    record: dict[str, Any] = {
        "created_utc": dt.datetime.now(dt.UTC).isoformat(),
        "git": runs.git_info(),
        "machine": machine(),
        "packages": versions(),
        "threads": {
            **runs.thread_settings(),
            "load_process_threads": 1,
            "note": "each load process runs one event loop thread",
        },
        "setup": {
            **setup,
            "trial_s": args.trial_s,
            "warmup_s": args.warmup_s,
            "arrivals": "poisson",
            "pass": f"lag p99 <= {LAG_P99_LIMIT_MS} ms, no errors, achieved >= {ACHIEVED_MIN:.0%} of offered",
            "request_body_bytes": len(json.dumps(BODY)),
        },
    }
    log(f"loadgen benchmark: cores {cores}; {setup['note']}")
    with tempfile.TemporaryDirectory(prefix="gawm-bench-") as tmp, servers(setup["server"], Path(tmp)) as url:
        work = Path(tmp)
        trial_ids = iter(range(10_000))

        def gawm(rate: float, processes_: int = 1, scenario: str = "poisson", **extra: Any) -> dict[str, Any]:
            load = {
                "scenario": scenario,
                "levels": [rate],
                "step_duration_s": args.trial_s,
                "warmup_s": args.warmup_s,
                "processes": processes_,
                "process_cpus": gen[:processes_],
                "request_timeout_s": 10,
                **extra,
            }
            return gawm_trial(url, load, work / f"gawm-{next(trial_ids)}")

        def locust(rate: float) -> dict[str, Any]:
            users = int(min(1000, max(20, rate / 50)))
            return locust_trial(
                url, gen[0], args.trial_s, args.warmup_s, work / f"locust-{next(trial_ids)}", rate=rate, users=users
            )

        log("1. HTTP clients, 16 in flight, one core")
        record["clients"] = _child(["clients", "--url", url, "--seconds", str(args.trial_s)], gen[0], 300)
        log(f"   {record['clients']}")
        log(f"2. overhead at {args.overhead_rps:g} req/s")
        raw = _child(
            ["raw", "--url", url, "--rate", str(args.overhead_rps), "--seconds", str(args.trial_s)], gen[0], 300
        )
        ours = gawm(args.overhead_rps, scenario="constant_rate")
        record["overhead"] = {
            "rate_rps": args.overhead_rps,
            "raw_socket": raw,
            "gawm": ours,
            "added_p50_ms": {
                "from_send": round(ours["service_p50_ms"] - raw["rtt_p50_ms"], 4),
                "from_schedule": round(ours["latency_p50_ms"] - raw["rtt_p50_ms"], 4),
            },
            "added_p99_ms": {
                "from_send": round(ours["service_p99_ms"] - raw["rtt_p99_ms"], 4),
                "from_schedule": round(ours["latency_p99_ms"] - raw["rtt_p99_ms"], 4),
            },
        }
        log(
            f"   raw socket p50/p99 {raw['rtt_p50_ms']}/{raw['rtt_p99_ms']} ms; gawm from send "
            f"{ours['service_p50_ms']}/{ours['service_p99_ms']} ms, from schedule "
            f"{ours['latency_p50_ms']}/{ours['latency_p99_ms']} ms"
        )
        log("3. open loop: highest Poisson rate with lag p99 <= 1 ms")
        record["open_loop"] = {}
        for name, trial in (
            ("gawm_1_process", gawm),
            ("locust_fasthttpuser", locust),
            ("gawm_2_processes", lambda rate: gawm(rate, processes_=2)),
        ):
            log(f"  {name}")
            record["open_loop"][name] = search(trial, args.start_rps, args.max_rps, args.bisections, log)
        log("4. closed loop: 16 users back to back")
        closed_gawm = gawm(16, scenario="closed_loop", max_connections=16)
        closed_locust = locust_trial(
            url, gen[0], args.trial_s, args.warmup_s, work / "locust-closed", mode="closed", users=16
        )
        record["closed_loop"] = {
            "users": 16,
            "gawm_rps": closed_gawm["achieved_rps"],
            "locust_rps": closed_locust["achieved_rps"],
            "gawm": closed_gawm,
            "locust": closed_locust,
        }
    open_loop = record["open_loop"]
    one, two = open_loop["gawm_1_process"]["max_rate_rps"], open_loop["gawm_2_processes"]["max_rate_rps"]
    record["summary"] = {
        "gawm_1_process_max_rps": one,
        "locust_max_rps": open_loop["locust_fasthttpuser"]["max_rate_rps"],
        "gawm_2_processes_max_rps": two,
        "scaling_2_processes": round(two / one, 2) if one else None,
        "gawm_over_locust": (
            round(one / open_loop["locust_fasthttpuser"]["max_rate_rps"], 2)
            if open_loop["locust_fasthttpuser"]["max_rate_rps"]
            else None
        ),
        "overhead_added_p50_ms_from_send": record["overhead"]["added_p50_ms"]["from_send"],
        "closed_loop_16_users_rps": {
            "gawm": record["closed_loop"]["gawm_rps"],
            "locust": record["closed_loop"]["locust_rps"],
        },
        "clients_rps": record["clients"],
        "load_average_after": os.getloadavg(),
    }
    return record


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, for JSON."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def append(path: Path, record: dict[str, Any]) -> None:
    """Add ``record`` to the runs in ``path`` (created if absent); earlier runs are kept."""
    data = json.loads(path.read_text()) if path.is_file() else {"schema_version": SCHEMA_VERSION, "runs": []}
    if data.get("schema_version") != SCHEMA_VERSION:
        raise SystemExit(f"{path}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    data["runs"].append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=paths.project_root() / "data" / "benchmarks" / "loadgen.json")
    parser.add_argument("--trial-s", type=float, default=3.0, help="measured seconds per trial")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="warm-up before each trial [s]")
    parser.add_argument("--start-rps", type=float, default=500.0)
    parser.add_argument("--max-rps", type=float, default=200_000.0)
    parser.add_argument("--bisections", type=int, default=4)
    parser.add_argument("--overhead-rps", type=float, default=500.0)
    parser.add_argument("--note", default="", help="recorded with the run, e.g. 'shared machine'")
    args = parser.parse_args(argv)
    record = run(args)
    record["note"] = args.note
    append(args.out, record)
    print(json.dumps(record["summary"], indent=1, default=_plain))
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
