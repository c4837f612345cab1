"""The test-environment scripts of k8s/testenv/ (run by `make test-prereqs` before pytest): shellcheck, dry runs that
change nothing, and the Kubernetes build's lock, recovery, reflect2 fix and cache stamp, with fakes of apt-get,
apt-cache, dpkg-query, dpkg-source, make, gcc and etcd on PATH, so that the script's own logic runs for real in
seconds (the real build takes 7.5-16 min): a build killed midway (SIGTERM or SIGKILL) takes its compilers with it,
releases the lock and leaves nothing that breaks the next attempt; two builds at once serialise on the lock and build
once; a cache without the reflect2 fix is rebuilt. And the tests never build: a missing control plane fails at once,
naming `make test-prereqs`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import k8s_env
import k8s_node
from gawm_lib import processes

ROOT = Path(__file__).resolve().parent.parent
TESTENV = ROOT / "k8s" / "testenv"
BUILD = TESTENV / "build-kubernetes.sh"
FETCH = TESTENV / "fetch-prometheus3.sh"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
DEB_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"

# Stand-ins for what the build calls; `make generated_files` records its pid and then, while $FAKE_STATE/hang exists,
# stays busy the way a long compile does (so that a test can kill the build midway).
FAKES = {
    "dpkg-query": "#!/bin/sh\nprintf 'install ok installed'\n",
    "apt-cache": f"#!/bin/sh\necho 'Package: kubernetes'\necho 'Version: {DEB_VERSION}'\n",
    "apt-get": f"#!/bin/sh\n[ \"$1\" = source ] && touch 'kubernetes_{DEB_VERSION}.dsc'\nexit 0\n",
    # as the real one: it refuses to unpack over an existing folder; the tree holds what the reflect2 fix edits
    "dpkg-source": """#!/bin/sh
mkdir "$4" || { echo "dpkg-source: error: unpack target exists: $4" >&2; exit 2; }
mkdir -p "$4/vendor/github.com/modern-go/reflect2" "$4/build/pause/linux"
printf 'replace (\\n\\tgithub.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.1\\n)\\n' > "$4/go.mod"
printf '# github.com/modern-go/reflect2 v1.0.1 => github.com/modern-go/reflect2 v1.0.1\\n' > "$4/vendor/modules.txt"
printf '# github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.1\\n' >> "$4/vendor/modules.txt"
echo old > "$4/vendor/github.com/modern-go/reflect2/go_above_17.go"
echo 'int main(void) { return 0; }' > "$4/build/pause/linux/pause.c"
""",
    "gcc": """#!/usr/bin/env bash
while [[ $# -gt 0 ]]; do [[ $1 == -o ]] && { echo pause > "$2"; exit 0; }; shift; done
exit 1
""",
    "etcd": "#!/bin/sh\nexit 0\n",
    "make": """#!/usr/bin/env bash
set -e
if [[ $1 == generated_files ]]; then
  echo $$ >> "$FAKE_STATE/make.pids"
  while [[ -e $FAKE_STATE/hang ]]; do sleep 0.05; done
  exit 0
fi
# the reflect2 fix is in: 1.0.2's files only, and the replacement versions changed
[[ ! -e vendor/github.com/modern-go/reflect2/go_above_17.go && -e vendor/github.com/modern-go/reflect2/reflect2.go ]]
grep -q '=> github.com/modern-go/reflect2 v1.0.2' go.mod
[[ $(grep -c '=> github.com/modern-go/reflect2 v1.0.2' vendor/modules.txt) == 2 ]]
mkdir -p _output/bin
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  printf '#!/bin/sh\\necho Kubernetes v1.20.2\\n' > "_output/bin/$name"
  chmod +x "_output/bin/$name"
done
""",
}


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not after {timeout_s:g} s: {what}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """A running process (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def lock_is_free(lock: Path) -> bool:
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


class FakeBuild:
    """The real build script against a temporary cache, with the fakes first on PATH."""

    def __init__(self, tmp_path: Path):
        self.fakes, self.state, self.cache = tmp_path / "fakebin", tmp_path / "state", tmp_path / "cache"
        self.fakes.mkdir()
        self.state.mkdir()
        for name, text in FAKES.items():
            (self.fakes / name).write_text(text)
            (self.fakes / name).chmod(0o755)
        reflect2 = tmp_path / "reflect2"  # stands in for Debian's golang-github-modern-go-reflect2-dev
        reflect2.mkdir()
        for name in ("reflect2.go", "go_above_118.go", "reflect2_amd64.s", "reflect2_test.go"):
            (reflect2 / name).write_text("package reflect2\n")
        sources = tmp_path / "src.sources"  # a deb-src entry where the script looks (not /etc/apt)
        sources.write_text("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n")
        self.env = {
            "PATH": f"{self.fakes}:{os.environ['PATH']}",
            "GAWM_K8S_CACHE": str(self.cache),
            "GAWM_K8S_SRC_LIST": str(sources),
            "GAWM_REFLECT2_SRC": str(reflect2),
            "FAKE_STATE": str(self.state),
        }
        self.logs = tmp_path / "logs"
        self.procs: list[subprocess.Popen] = []

    def hang(self, on: bool) -> None:
        flag = self.state / "hang"
        flag.touch() if on else flag.unlink(missing_ok=True)

    def make_pids(self) -> list[int]:
        path = self.state / "make.pids"
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def start(self, name: str) -> subprocess.Popen:
        proc = processes.spawn(["bash", str(BUILD)], self.logs / f"{name}.log", env=self.env)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.cache.glob("build*"))

    def installed(self) -> bool:
        return (
            all(os.access(self.cache / "bin" / name, os.X_OK) for name in BINARIES)
            and all((self.cache / "images" / name).stat().st_size > 0 for name in ("pause.tar", "host-python.tar"))
            and "reflect2 v1.0.2" in (self.cache / "bin" / "build-stamp").read_text()
        )

    def stop_all(self) -> None:
        self.hang(False)
        for proc in self.procs:
            processes.stop(proc, timeout_s=10)


@pytest.fixture
def fake_build(tmp_path):
    build = FakeBuild(tmp_path)
    yield build
    build.stop_all()


def test_shellcheck_passes_on_the_testenv_scripts():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install shellcheck (gawm_lib.sysdeps installs it)"
    result = subprocess.run(
        [shellcheck, "-S", "style", BUILD.name, FETCH.name, "build-control-plane.sh", "node.sh"],
        check=False,
        cwd=TESTENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [BUILD, FETCH])
def test_dry_run_changes_nothing(tmp_path, script):
    cache = tmp_path / "cache"
    result = subprocess.run(
        ["bash", str(script), "--dry-run"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GAWM_CACHE_DIR": str(cache), "GAWM_K8S_CACHE": ""},
    )
    assert result.returncode == 0, result.stderr
    assert not cache.exists()
    if script == BUILD:
        assert "would take the lock" in result.stderr and "make generated_files" in result.stderr


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_build_killed_midway_takes_its_compilers_along_and_the_next_one_succeeds(fake_build, how):
    # what a build killed by the old script left: a tree on which dpkg-source refuses to unpack
    (fake_build.cache / "build" / "src").mkdir(parents=True)
    fake_build.hang(True)
    first = fake_build.start("first")
    wait_until(lambda: fake_build.make_pids(), "the first build reaches make")
    assert "removing what an interrupted build left" in fake_build.log("first")
    (compiler,) = fake_build.make_pids()
    assert alive(compiler) and first.poll() is None

    os.kill(first.pid, how)  # the script only: its step runs in a process group of its own
    first.wait(30)
    wait_until(lambda: not alive(compiler), "the killed build's make exits with it")
    wait_until(lambda: lock_is_free(fake_build.cache / "lock"), "the killed build's lock is released")
    assert not fake_build.installed()
    if how == signal.SIGTERM:  # it cleaned up after itself
        assert fake_build.leftovers() == [] and "removing build tree" in fake_build.log("first")
    else:  # nothing could run: its tree is still there
        assert len(fake_build.leftovers()) == 1

    fake_build.hang(False)
    second = fake_build.start("second")
    assert second.wait(60) == 0, fake_build.log("second")
    assert fake_build.installed() and fake_build.leftovers() == []
    assert len(fake_build.make_pids()) == 2
    if how == signal.SIGKILL:
        assert "removing what an interrupted build left" in fake_build.log("second")
    assert "done in" in fake_build.log("second") and "Kubernetes v1.20.2" in fake_build.log("second")
    # and then there is nothing to do
    third = fake_build.start("third")
    assert third.wait(30) == 0 and "nothing to do" in fake_build.log("third")
    assert len(fake_build.make_pids()) == 2


def test_two_builds_at_once_serialise_on_the_lock_and_build_once(fake_build):
    fake_build.hang(True)
    first = fake_build.start("first")
    wait_until(lambda: fake_build.make_pids(), "the first build reaches make")
    second = fake_build.start("second")
    wait_until(lambda: "waiting for it to finish" in fake_build.log("second"), "the second build waits on the lock")
    assert second.poll() is None and first.poll() is None and len(fake_build.make_pids()) == 1

    fake_build.hang(False)
    assert first.wait(60) == 0, fake_build.log("first")
    assert second.wait(60) == 0, fake_build.log("second")
    assert len(fake_build.make_pids()) == 1  # built once
    assert fake_build.installed() and fake_build.leftovers() == []
    assert "done in" in fake_build.log("first")
    assert "the other build has finished" in fake_build.log("second") and "nothing to do" in fake_build.log("second")


def test_the_tests_never_build_a_missing_control_plane_fails_at_once_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("GAWM_K8S_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("GAWM_CACHE_DIR", str(tmp_path / "empty"))
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="make test-prereqs"):
        k8s_env.ensure_binaries()
    with pytest.raises(pytest.fail.Exception, match="make test-prereqs"):
        k8s_env.prometheus3_binary()
    with pytest.raises(pytest.fail.Exception, match="make test-prereqs"):  # the real node's binaries and images
        k8s_node.require_prerequisites()
    assert time.monotonic() - start < 5
    assert not (tmp_path / "empty").exists()


def test_make_test_sets_up_the_heavy_prerequisites_before_pytest_starts():
    plan = subprocess.run(
        ["make", "-n", "test"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    ).stdout
    build, fetch, pytest_at = (plan.find(s) for s in ("build-kubernetes.sh", "fetch-prometheus3.sh", "-m pytest"))
    assert -1 < build < pytest_at and -1 < fetch < pytest_at, plan


def test_a_cache_without_the_reflect2_fix_is_rebuilt(fake_build):
    """The old control-plane-only cache (three binaries, no stamp) is not taken for a complete one."""
    (fake_build.cache / "bin").mkdir(parents=True)
    for name in BINARIES[:3]:
        (fake_build.cache / "bin" / name).write_text("#!/bin/sh\n")
        (fake_build.cache / "bin" / name).chmod(0o755)
    first = fake_build.start("first")
    assert first.wait(60) == 0, fake_build.log("first")
    assert fake_build.installed() and len(fake_build.make_pids()) == 1
    assert "reflect2 fix" in fake_build.log("first")
    pause = fake_build.cache / "images" / "pause.tar"
    assert tarfile.is_tarfile(pause)
    with tarfile.open(pause) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["gawm.local/pause:3.4.1"]
    # a stamp of another build (say, without the fix) is rebuilt too
    (fake_build.cache / "bin" / "build-stamp").write_text("kubernetes v1.20.2; no reflect2 fix\n")
    second = fake_build.start("second")
    assert second.wait(60) == 0 and len(fake_build.make_pids()) == 2, fake_build.log("second")
    third = fake_build.start("third")
    assert third.wait(30) == 0 and "nothing to do" in fake_build.log("third")
