"""JupyterLab as a user meets it: a real Jupyter server, started with the flags of ``make lab`` (read from the Makefile)
on loopback, is rooted at the project and opens on notebooks/; it lists the notebooks through its REST API, and one
notebook is executed cell by cell through a kernel over the server's websocket channel."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import nbformat
import pytest
import websocket

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lab_command() -> list[str]:
    """The command ``make lab`` runs (its recipe, expanded by make itself), with jupyter run by this interpreter."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "-n", "-o", "env", "-C", str(ROOT), "lab"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
    )
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout.replace("\\\n", " "))
    assert argv[0].endswith("/jupyter") and argv[1] == "lab", argv
    return [sys.executable, "-m", "jupyter", *argv[1:]]


@contextlib.contextmanager
def start_lab(tmp_path: Path, env: dict[str, str] | None = None):
    """A JupyterLab server as ``make lab`` starts it, on a free loopback port with a token, its runtime and config
    (workspaces, user settings) in ``tmp_path``, never contacting anything but loopback (no update or news check).
    Gives (base URL, token, auth headers)."""
    port, token = free_port(), secrets.token_hex(16)
    environ = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        **(env or {}),
    }
    log = tmp_path / "jupyter.log"
    cwd = tmp_path / "elsewhere"  # the root must come from the command, not from where it is started
    cwd.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            *make_lab_command(),
            "--no-browser",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=environ,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/status", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        yield base, token, headers
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def jupyter(tmp_path):
    with start_lab(tmp_path) as server:
        yield server


def execute(ws, code: str, timeout_s: float = 120) -> list[dict]:
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    # Done when the shell reply has come AND iopub says idle: the two channels are not ordered with each other.
    outputs, reply, idle, deadline = [], None, False, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] in ("stream", "execute_result", "error"):
            outputs.append(msg)
        if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
            reply = msg
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
        if reply is not None and idle:
            assert reply["content"]["status"] == "ok", outputs
            return outputs
    raise TimeoutError(code[:80])


def test_make_lab_roots_jupyterlab_at_the_project_and_opens_on_the_notebooks(jupyter):
    base, token, headers = jupyter
    top = httpx.get(f"{base}/api/contents", headers=headers).json()
    assert {"notebooks", "data", "params", "Makefile"} <= {item["name"] for item in top["content"]}
    assert httpx.get(f"{base}/api/contents/params/quick.yaml", headers=headers).status_code == 200
    landing = httpx.get(f"{base}/?token={token}")  # what the URL `make lab` prints, or a bare one, opens first
    assert landing.status_code == 302 and landing.headers["location"].startswith("/lab/tree/notebooks"), landing
    assert httpx.get(f"{base}{landing.headers['location']}").status_code == 200


def test_lab_lists_notebooks_and_runs_one_through_a_kernel(jupyter):
    base, token, headers = jupyter
    listing = httpx.get(f"{base}/api/contents/notebooks", headers=headers).json()
    names = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
    assert {"00_environment_check.ipynb", "01_measure_load_sweep.ipynb", "02_figures_load_sweep.ipynb"} <= names
    kernel = httpx.post(f"{base}/api/kernels", headers=headers, json={"name": "python3"}).json()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{base.rsplit(':', 1)[1]}/api/kernels/{kernel['id']}/channels?token={token}", timeout=120
    )
    try:
        notebook = nbformat.read(ROOT / "notebooks" / "00_environment_check.ipynb", as_version=4)
        outputs = []
        for cell in notebook.cells:
            if cell.cell_type == "code":
                outputs = execute(ws, cell.source)
        last = outputs[-1]["content"]["data"]["text/plain"]
        assert "'checks'" in last and "'failed'" in last
        executable = execute(ws, "import sys; print(sys.executable)")
        assert str(Path(sys.executable).parent) in executable[0]["content"]["text"]  # the project's environment
    finally:
        ws.close()
        httpx.delete(f"{base}/api/kernels/{kernel['id']}", headers=headers)
