"""The three workloads on real data: decoding, one batch each, sample payloads, and clear errors for bad input."""

from __future__ import annotations

import io
import subprocess
import wave

import numpy as np
import pytest

from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads import InferenceError, build_workload, samples
from gawm_lib.workloads.whisper import read_audio


@pytest.fixture(scope="module")
def resnet():
    w = build_workload(WorkloadConfig(name="resnet50", warmup_batches=0))
    w.load()
    return w


def test_resnet_classifies_real_photos_into_imagenet_classes(resnet):
    photos = samples.photos(3, seed=7)
    assert len({len(p) for p in photos}) == 3 and all(p[:2] == b"\xff\xd8" for p in photos)  # JPEG, varied sizes
    tensors = [resnet.decode(p) for p in photos]
    assert tensors[0].shape == (3, 224, 224)
    answers = resnet.predict(tensors)
    assert len(answers) == 3
    assert all(a["label"] in resnet.categories and len(a["top_k"]) == 5 for a in answers)
    assert resnet.weights_info["weights"] == "random"
    with pytest.raises(InferenceError, match="not a JPEG/PNG image"):
        resnet.decode(b"definitely not an image")


def test_request_body_round_trip_and_base64_errors(resnet):
    photo = samples.photos(1, seed=1)[0]
    assert resnet.items_from_request(resnet.request_body([photo])) == [photo]
    bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}
    with pytest.raises(InferenceError, match="items must be base64"):
        resnet.items_from_request(bad)


def test_distilbert_tokenises_with_the_real_uncased_vocabulary():
    w = build_workload(WorkloadConfig(name="distilbert", warmup_batches=0, max_seq_len=8))
    w.load()
    ids = w.tokenizer(["Hello world"])["input_ids"][0]
    assert ids == [101, 7592, 2088, 102]  # [CLS] hello world [SEP] in bert-base-uncased
    answers = w.predict(["one two three four five six seven eight nine ten", "short"])
    assert [a["tokens"] for a in answers] == [8, 3]  # truncated to max_seq_len; padding not counted


def test_whisper_transcribes_a_batch_with_fixed_decode_length():
    w = build_workload(WorkloadConfig(name="whisper", decode_tokens=3, warmup_batches=0))
    w.load()
    clips = samples.speech(2, seed=3)
    assert all(text for _, text in clips)
    answers = w.predict([w.decode(clip) for clip, _ in clips])
    assert [a["tokens"] for a in answers] == [3, 3]  # random weights: always the full decode length
    assert all(1.0 < a["audio_s"] < 10.0 for a in answers)


def test_audio_reading_wav_directly_and_flac_through_ffmpeg():
    clip, _ = samples.speech(1, seed=5)[0]
    with wave.open(io.BytesIO(clip)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
        frames = wav.getnframes()
    pcm = read_audio(clip)
    assert pcm.dtype == np.float32 and len(pcm) == frames and 0.01 < np.abs(pcm).max() <= 1.0
    flac = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", "pipe:0", "-f", "flac", "pipe:1"], input=clip,
                          capture_output=True, check=True).stdout
    assert np.allclose(read_audio(flac), pcm, atol=1e-4)
    with pytest.raises(InferenceError, match="ffmpeg cannot decode it"):
        read_audio(b"not audio at all")
