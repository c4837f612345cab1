"""The caller's side: check the settings, start the load process(es), show progress, return the result."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gawm_lib import processes
from gawm_lib.loadgen.spec import LoadSpec

READY_TIMEOUT_S = 120.0
START_DELAY_S = 0.1  # between the start signal and the common start time


class LoadError(RuntimeError):
    """The load process failed, or the spec cannot be run (settings, bodies, targets)."""


def check(spec: LoadSpec) -> None:
    """Refuse a spec that cannot run, before anything is sent: settings (naming the field as ``load.<field>``), request
    bodies and targets. Raises :class:`gawm_lib.config.ConfigError` or :class:`LoadError`."""
    from gawm_lib.config import preflight_load, validate_load

    preflight_load(validate_load(spec.load, source="load settings"), source="load settings")  # trace file, cores
    if not spec.targets:
        raise LoadError("no targets: give at least one server base URL, e.g. http://127.0.0.1:8000")
    for target in spec.targets:
        if not target.startswith(("http://", "https://")):
            raise LoadError(f"target {target!r}: expected a base URL such as http://127.0.0.1:8000")
    bodies = Path(spec.bodies_path)
    if not bodies.is_file() or not any(line.strip() for line in bodies.read_text().splitlines()):
        raise LoadError(f"{bodies}: no request bodies (write them with gawm_lib.loadgen.write_bodies)")


def _names(spec: LoadSpec, index: int, count: int) -> tuple[str, str, str]:
    tag = spec.workload if count == 1 else f"{spec.workload}-p{index}"
    return f"{tag}-load-spec.json", f"{tag}-load-result.json", f"{tag}-load.log"


def run_load(spec: LoadSpec, work_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run the load in its own process(es) (``load.processes`` of them) and return the result: the phases with UTC
    times, the request count, whether it was interrupted (and, for several processes, each one's result).

    Settings are checked first (nothing is sent if they are wrong). On Ctrl-C the load processes are told to stop: they
    cancel what is in flight (recorded as ``cancelled``), write their last part and exit; then KeyboardInterrupt is
    raised again here. A progress bar shows in notebooks and terminals when ``progress``.
    """
    check(spec)
    count = int(spec.load.get("processes", 1))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start_file = work_dir / f"{spec.workload}-load-start.json"
    start_file.unlink(missing_ok=True)
    procs, results, logs = [], [], []
    for index in range(count):
        spec_name, result_name, log_name = _names(spec, index, count)
        part = dataclasses.replace(
            spec, process_index=index, process_count=count, start_file=str(start_file) if count > 1 else ""
        )
        part.write(work_dir / spec_name)
        (work_dir / result_name).unlink(missing_ok=True)
        results.append(work_dir / result_name)
        logs.append(work_dir / log_name)
        procs.append(
            processes.spawn(
                [
                    sys.executable,
                    "-m",
                    "gawm_lib.loadgen",
                    str(work_dir / spec_name),
                    "--result",
                    str(work_dir / result_name),
                ],
                logs[-1],
                stdout=subprocess.PIPE,
            )
        )
    done = [0] * count
    ready = [threading.Event() for _ in range(count)]
    state = {"phase": "", "step": 0}

    def read(index: int) -> None:
        assert procs[index].stdout is not None
        for line in procs[index].stdout:
            try:
                update = json.loads(line)
            except ValueError:
                continue
            if update.get("ready"):
                ready[index].set()
            elif "done" in update:
                done[index] = int(update["done"])
                state.update(phase=update.get("phase", ""), step=update.get("step", 0))
        ready[index].set()  # the process ended: do not wait for it

    readers = [threading.Thread(target=read, args=(i,), daemon=True, name=f"gawm-load-{i}") for i in range(count)]
    for reader in readers:
        reader.start()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"{spec.workload} load", unit="req", leave=True)
    try:
        if count > 1:
            deadline = time.monotonic() + READY_TIMEOUT_S
            for event in ready:
                event.wait(max(0.0, deadline - time.monotonic()))
            tmp = start_file.with_name(f".{start_file.name}.tmp")
            tmp.write_text(json.dumps({"start_monotonic_ns": time.monotonic_ns() + int(START_DELAY_S * 1e9)}))
            tmp.replace(start_file)
        while any(p.poll() is None for p in procs):
            if bar is not None:
                bar.set_postfix_str(f"{state['phase']} {state['step']}", refresh=False)
                bar.update(sum(done) - bar.n)
            time.sleep(0.2)
        for reader in readers:
            reader.join(5)
        if bar is not None:
            bar.update(sum(done) - bar.n)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        try:
            for proc in procs:
                proc.wait(30)
        finally:
            for proc in procs:
                processes.stop(proc)
        raise
    finally:
        if bar is not None:
            bar.close()
        for proc in procs:
            processes.stop(proc)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0 or not results[i].is_file()]
    if failed:
        i, code = failed[0]
        tail = processes.log_tail(logs[i])
        last = tail.strip().splitlines()[-1] if tail.strip() else "(no log)"  # a traceback ends with its error
        raise LoadError(f"load process {i} failed (exit {code}): {last}\n--- {logs[i]} (last lines) ---\n{tail}")
    parts = [json.loads(path.read_text()) for path in results]
    return parts[0] if count == 1 else merge_results(parts)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result of several processes' results: phases spanning all of them, requests added up; the wall-clock anchor
    is process 0's (the monotonic clock is the same for every process of a host)."""
    first = parts[0]
    anchor = {k: first[k] for k in ("anchor_unix_ns", "anchor_monotonic_ns")}
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for part in parts:
        for phase in part["phases"]:
            key = (phase["phase"], phase["step"])
            if key not in merged:
                merged[key] = dict(phase)
            else:
                merged[key]["start_ns"] = min(merged[key]["start_ns"], phase["start_ns"])
                merged[key]["end_ns"] = max(merged[key]["end_ns"], phase["end_ns"])
    phases = []
    for phase in merged.values():
        for edge in ("start", "end"):
            phase[f"{edge}_unix_ns"] = anchor["anchor_unix_ns"] + phase[f"{edge}_ns"] - anchor["anchor_monotonic_ns"]
        phases.append(phase)
    phases.sort(key=lambda p: p["start_ns"])
    return {
        "workload": first["workload"],
        **anchor,
        "phases": phases,
        "requests": sum(p["requests"] for p in parts),
        "interrupted": any(p["interrupted"] for p in parts),
        "processes": len(parts),
        "client": first.get("client"),
        "parts": parts,
    }


def write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    """Write OIP v2 request bodies as JSON lines: the payloads a load samples from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path
