"""Payloads chosen by the load settings: Whisper clips of one exact length (``load.payload_audio_s``), and the settings
errors around it."""

from __future__ import annotations

import io
import wave

import pytest

from gawm_lib.config import ConfigError, LoadConfig, WorkloadConfig, validate_load, validate_params
from gawm_lib.workloads import build_workload, sample_payloads, samples
from gawm_lib.workloads.whisper import read_audio


def frames(clip: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(clip)) as wav:
        return wav.getnframes(), wav.getframerate()


@pytest.mark.parametrize("seconds", [0.5, 2.0, 12.34])
def test_speech_clips_last_exactly_as_long_as_asked(seconds):
    clips = samples.speech_clips(3, seed=5, seconds=seconds)
    assert [frames(c) for c in clips] == [(round(seconds * 16_000), 16_000)] * 3
    pcm = read_audio(clips[0])
    assert len(pcm) == round(seconds * 16_000) and abs(pcm).max() > 0.05  # speech, not silence
    assert samples.speech_clips(3, seed=5, seconds=seconds) == clips  # seeded
    assert samples.speech_clips(1, seed=6, seconds=seconds) != clips[:1]


def test_long_clips_are_speech_to_the_end():
    (clip,) = samples.speech_clips(1, seed=1, seconds=30)
    pcm = read_audio(clip)
    assert len(pcm) == 480_000
    assert abs(pcm[-80_000:]).max() > 0.05  # the last 5 s are spoken too: sentences are joined until the clip is full


def test_sample_payloads_follow_the_load_settings():
    whisper = build_workload(WorkloadConfig(name="whisper"))
    clips = sample_payloads(whisper, LoadConfig(payload_count=2, payload_seed=3, payload_audio_s=3))
    assert [frames(c)[0] for c in clips] == [48_000, 48_000]
    utterances = sample_payloads(whisper, LoadConfig(payload_count=2, payload_seed=3))
    assert utterances == whisper.sample_items(2, 3)  # unset: whole utterances, as before


def test_audio_length_settings_are_checked_against_the_workloads():
    cfg = validate_params({"workloads": ["whisper"], "load": {"payload_audio_s": 30}})
    assert cfg.load.payload_audio_s == 30
    problems = [
        (
            {"workloads": ["resnet50"], "load": {"payload_audio_s": 5}},
            "load.payload_audio_s sets the length of Whisper's clips: add the whisper workload",
        ),
        (
            {"workloads": [{"name": "whisper", "max_audio_s": 10}], "load": {"payload_audio_s": 12}},
            "load.payload_audio_s: 12 s is longer than the whisper workload's max_audio_s (10 s)",
        ),
        (
            {"workloads": ["whisper"], "load": {"payload_audio_s": 31}},
            "load.payload_audio_s: Input should be less than or equal to 30",
        ),
        (
            {"workloads": ["whisper"], "load": {"payload_audio_s": 0}},
            "load.payload_audio_s: Input should be greater than 0",
        ),
    ]
    for tree, message in problems:
        with pytest.raises(ConfigError) as err:
            validate_params(tree, source="p.yaml")
        assert message in str(err.value)
    with pytest.raises(ValueError, match="up to 30 s"):
        samples.speech_clips(1, 0, 31)


def test_the_load_section_alone_names_its_keys():
    # what a load process is given: its own section, without the experiment's workloads
    assert validate_load({"payload_audio_s": 5.0}).payload_audio_s == 5.0
    with pytest.raises(ConfigError) as err:
        validate_load({"levelz": [1]}, source="load settings")
    assert "load settings: load.levelz: unknown key 'levelz' (did you mean 'levels'?)" in str(err.value)
