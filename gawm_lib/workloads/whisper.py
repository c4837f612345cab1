"""Whisper speech recognition (openai-whisper): text and segments, audio seconds per request, batched decoding.

Two inputs, one per request, each clip at most ``max_audio_s`` (one 30 s window):

- ``audio`` (BYTES, ``[n]``): WAV read directly (16-bit, 16 kHz), anything else (FLAC, MP3, other rates) via ffmpeg;
- ``pcm`` (FP32, ``[n, samples]``): mono float PCM at 16 kHz, -1..1.

The log-Mel spectrogram is computed on arrival; a batch runs the encoder once and decodes all clips together.
``decode_tokens`` caps the decode length. Unset, it is 224 (Whisper's full window, enough for a 30 s clip) with real
weights and 8 with random weights, which never emit end-of-text (so the cap fixes the cost per clip); the effective
value is in the model's metadata (``weights.decode_tokens``) and so in the run's manifest. A clip whose decoding
stopped at the cap without end-of-text is ``truncated`` (an output per clip, and a count per request in the answer's
parameters): its text may be cut. With random weights every clip is truncated, which is true and harmless for
performance work.
``weights: pretrained`` loads the real weights that ``gawm weights fetch whisper:<size>`` installed
(:mod:`gawm_lib.weights`; tiny.en and base exist offline), else ``whisper.load_model`` (OpenAI's servers).
``temperatures`` with more than one value turns on openai-whisper's fallback: clips whose text is too repetitive
(gzip compression ratio > 2.4) or too unlikely (mean log-probability < -1) are decoded again, together, at the next one.
"""

from __future__ import annotations

import io
import json
import subprocess
import wave
from dataclasses import replace
from typing import Any

import numpy as np

from gawm_lib import weights as weights_store
from gawm_lib.workloads import samples
from gawm_lib.workloads.base import InputSpec, WeightsError, Workload, load_checkpoint
from gawm_lib.workloads.device import maybe_compile
from gawm_lib.workloads.oip import InferenceError, Tensor

SAMPLE_RATE = 16_000
COMPRESSION_RATIO_THRESHOLD = 2.4  # openai-whisper's transcribe() defaults
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
FULL_WINDOW_TOKENS = 224  # openai-whisper's default sample_len: n_text_ctx // 2
RANDOM_DECODE_TOKENS = 8  # random weights never emit end-of-text: a short fixed decode keeps them cheap
# Architecture of each size (openai-whisper's published ModelDimensions); n_vocab differs for English-only models.
DIMENSIONS = {
    "tiny": (80, 384, 6, 4, 51865),
    "tiny.en": (80, 384, 6, 4, 51864),
    "base": (80, 512, 8, 6, 51865),
    "base.en": (80, 512, 8, 6, 51864),
    "small": (80, 768, 12, 12, 51865),
    "medium": (80, 1024, 16, 24, 51865),
    "large-v3": (128, 1280, 20, 32, 51866),
}


class Whisper(Workload):
    name = "whisper"
    inputs = (
        InputSpec("audio", ("BYTES",), (-1,), "audio files: WAV, FLAC, MP3, ... (base64 in JSON)"),
        InputSpec("pcm", ("FP32", "FP16", "BF16"), (-1, -1), "mono PCM at 16 kHz, -1..1, one row per clip"),
    )
    outputs = (
        ("text", "BYTES", ()),
        ("segments", "BYTES", ()),
        ("audio_s", "FP32", ()),
        ("tokens", "INT32", ()),
        ("temperature", "FP32", ()),
        ("avg_logprob", "FP32", ()),
        ("truncated", "BOOL", ()),
    )
    pad_on_cuda = False  # padding a batch costs whole decodes; only torch.compile needs it

    def _build(self):
        import torch
        import whisper
        from whisper.model import ModelDimensions

        size = self.cfg.model_size
        self.decode_tokens = effective_decode_tokens(self.cfg)
        local = weights_store.whisper_checkpoint(size) if self.cfg.weights == "pretrained" else None
        if local is not None:  # installed by `gawm weights fetch whisper:<size>`: real weights, offline
            checkpoint = load_checkpoint(str(local))
            model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))
            model.load_state_dict(checkpoint["model_state_dict"])
            info = {"weights": "pretrained", "path": str(local), **checkpoint.get("provenance", {})}
        elif self.cfg.weights == "pretrained":
            try:
                model = whisper.load_model(size, device="cpu")
            except OSError as exc:  # urllib's URLError and friends: no way to OpenAI's servers
                offline = ", ".join(f"whisper:{s}" for s in weights_store.whisper_offline_sizes())
                raise WeightsError(
                    f"whisper {size}: pretrained weights are not installed here and downloading them from OpenAI "
                    f"failed ({type(exc).__name__}: {exc}). Offline real weights: `gawm weights fetch {offline}` "
                    f"(then model_size tiny.en or base), or weights: random (same compute)"
                ) from None
            info = {"weights": "pretrained", "source": f"whisper.load_model({size!r})"}
        elif self.cfg.weights == "random":
            n_mels, state, heads, layers, vocab = DIMENSIONS[size]
            dims = ModelDimensions(
                n_mels=n_mels,
                n_audio_ctx=1500,
                n_audio_state=state,
                n_audio_head=heads,
                n_audio_layer=layers,
                n_vocab=vocab,
                n_text_ctx=448,
                n_text_state=state,
                n_text_head=heads,
                n_text_layer=layers,
            )
            torch.manual_seed(0)
            with torch.device(self.cfg.device):  # initialised where it runs: large-v3's 1.5 B on a CPU take a minute
                model = whisper.model.Whisper(dims)
                # openai-whisper leaves the decoder's positional embedding as torch.empty (a checkpoint fills it):
                # whatever the allocator hands back, NaN at times, which made random-weights decoding fail at random.
                torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)
            info = {"weights": "random", "seed": 0, "model_size": size, "initialised_on": self.cfg.device}
        else:
            checkpoint = load_checkpoint(self.cfg.weights)
            model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))
            model.load_state_dict(checkpoint["model_state_dict"])
            info = {
                "weights": "path",
                "path": self.cfg.weights,
                "dims": checkpoint["dims"],
                **checkpoint.get("provenance", {}),
            }
        model = model.eval().to(self.cfg.device, self.torch_dtype)
        for module in model.modules():  # openai-whisper normalises in float32 (its LayerNorm casts x up), so its
            if isinstance(module, torch.nn.LayerNorm):  # weights stay float32; the rest is in the chosen precision
                module.float()
        model.encoder = maybe_compile(model.encoder, self.cfg)  # the decoder loop's cache hooks do not compile
        self.options = whisper.DecodingOptions(
            language="en",
            without_timestamps=not self.cfg.timestamps,
            sample_len=self.decode_tokens,
            fp16=False,  # dtypes are handled here (see _Task), for bf16 too
        )
        info.update(
            compiled_encoder=self.cfg.compile,
            decode_tokens=self.decode_tokens,
            decode_tokens_from="settings"
            if self.cfg.decode_tokens is not None
            else f"default for {'random' if self.cfg.weights == 'random' else 'real'} weights",
            temperatures=self.cfg.temperatures,
        )
        return model, info

    # -- request side -------------------------------------------------------------------------------------------------
    def _mel(self, pcm: np.ndarray, where: str):
        import torch
        import whisper

        limit = int(self.cfg.max_audio_s * SAMPLE_RATE)
        if not 0 < len(pcm) <= limit:
            raise InferenceError(
                where, f"1 to {limit} samples at 16 kHz (max_audio_s={self.cfg.max_audio_s:g})", f"{len(pcm)} samples"
            )
        n_mels = self.model.dims.n_mels if self.model is not None else 80
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(pcm)), n_mels=n_mels)
        return mel, len(pcm) / SAMPLE_RATE

    def decode_item(self, raw: bytes | str, where: str = "audio") -> Any:
        if not isinstance(raw, bytes):
            raise InferenceError(where, "audio file bytes")
        return self._mel(read_audio(raw, where, self.cfg.max_audio_s), where)

    def decode_tensor(self, tensor: Tensor) -> list[Any]:
        if tensor.name == "audio":
            return [
                self.decode_item(raw, f"{tensor.field}.data[{i}]") for i, raw in enumerate(self.bytes_items(tensor))
            ]
        rows = self.finite(tensor, tensor.data).astype(np.float32)
        return [self._mel(np.ascontiguousarray(row), f"{tensor.field}.shape[1]") for row in rows]

    # -- batch side ---------------------------------------------------------------------------------------------------
    def prepare(self, items: list[Any]):
        import torch

        mels = [mel for mel, _ in items]
        mels += [mels[0]] * (self.padded_size(len(items)) - len(items))
        return self.stager({"mel": torch.stack(mels)}, {"mel": self.torch_dtype}), [s for _, s in items]

    def forward(self, batch, count: int) -> list[dict[str, Any]]:
        import torch

        staged, seconds = batch
        with torch.inference_mode():
            features = self.model.encoder(staged.get()["mel"])[:count]
            results: list[Any] = [None] * count
            pending = list(range(count))
            for step, temperature in enumerate(self.cfg.temperatures):
                options = replace(self.options, temperature=temperature)
                decoded = _task(self.model, options).run(features[pending])
                last = step == len(self.cfg.temperatures) - 1
                retry = []
                for index, result in zip(pending, decoded):
                    results[index] = result
                    if not last and _needs_fallback(result):
                        retry.append(index)
                pending = retry
                if not pending:
                    break
        return [self._answer(r, s) for r, s in zip(results, seconds)]

    def _answer(self, result, seconds: float) -> dict[str, Any]:
        logprob = float(result.avg_logprob) if np.isfinite(result.avg_logprob) else -100.0
        return {
            "text": result.text,
            "segments": json.dumps(self._segments(result.tokens, result.text, seconds)),
            "audio_s": seconds,
            "tokens": len(result.tokens),
            "temperature": float(result.temperature),
            "avg_logprob": logprob,
            "truncated": is_truncated(result.tokens, self.decode_tokens),
        }

    def _segments(self, tokens: list[int], text: str, seconds: float) -> list[dict[str, Any]]:
        """Timed segments from timestamp tokens; without them, one segment for the clip."""
        begin = self.tokenizer.timestamp_begin
        if not self.cfg.timestamps or not any(t >= begin for t in tokens):
            return [{"start": 0.0, "end": round(seconds, 3), "text": text}]
        segments, start, words = [], 0.0, []
        for token in tokens:
            if token < begin:
                words.append(token)
                continue
            time_s = (token - begin) * 0.02
            if words:
                segments.append(
                    {"start": round(start, 2), "end": round(time_s, 2), "text": self.tokenizer.decode(words).strip()}
                )
                words = []
            start = time_s
        if words:
            segments.append(
                {"start": round(start, 2), "end": round(seconds, 2), "text": self.tokenizer.decode(words).strip()}
            )
        return segments

    @property
    def tokenizer(self):
        from whisper.tokenizer import get_tokenizer

        m = self.model
        return get_tokenizer(m.is_multilingual, num_languages=m.num_languages, language="en", task="transcribe")

    def request_stats(self, answers: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "audio_s": sum(a["audio_s"] for a in answers),
            "tokens": sum(a["tokens"] for a in answers),
            "truncated": sum(bool(a["truncated"]) for a in answers),
        }

    # -- samples ------------------------------------------------------------------------------------------------------
    def sample_items(self, count: int, seed: int) -> list[bytes]:
        return [clip for clip, _text in samples.speech(count, seed)]

    def sample_pcm(self, count: int, seed: int, seconds: float = 30.0) -> np.ndarray:
        """``[count, seconds * 16000]`` float32: sample speech, zero-padded (or cut) to ``seconds``."""
        out = np.zeros((count, int(seconds * SAMPLE_RATE)), dtype=np.float32)
        for row, clip in zip(out, self.sample_items(count, seed)):
            pcm = read_audio(clip)[: len(row)]
            row[: len(pcm)] = pcm
        return out

    def warmup_item(self) -> bytes:
        return samples.speech(1, 0)[0][0]


def effective_decode_tokens(cfg) -> int:
    """``decode_tokens`` as set, else 224 (the full window) with real weights and 8 with random ones."""
    if cfg.decode_tokens is not None:
        return cfg.decode_tokens
    return RANDOM_DECODE_TOKENS if cfg.weights == "random" else FULL_WINDOW_TOKENS


def is_truncated(tokens: list[int], limit: int) -> bool:
    """Whether decoding stopped at the ``limit`` without end-of-text: openai-whisper drops the end-of-text token, so
    a clip that ended on its own has fewer than ``limit`` tokens (``limit`` steps make at most ``limit`` tokens)."""
    return len(tokens) >= limit


def _task(model, options):
    from whisper.decoding import DecodingTask

    class Task(DecodingTask):
        # openai-whisper only knows fp16/fp32 activations; these are encoder outputs in the model's own dtype.
        def _get_audio_features(self, mel):
            return mel

    return Task(model, options)


def _needs_fallback(result) -> bool:
    silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD
    bad = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD or result.avg_logprob < LOGPROB_THRESHOLD
    return bad and not silent


def read_audio(raw: bytes, where: str = "audio", max_s: float = 30.0) -> np.ndarray:
    """Mono float32 PCM at 16 kHz from WAV (16-bit 16 kHz read directly) or anything ffmpeg reads (FLAC, MP3, ...).

    At most ``max_s`` seconds plus one sample are decoded, so a small compressed file cannot expand without bound;
    the caller refuses a clip that long."""
    if raw[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(raw)) as wav:
                if wav.getsampwidth() == 2 and wav.getframerate() == SAMPLE_RATE:
                    frames = min(wav.getnframes(), int(max_s * SAMPLE_RATE) + 1)
                    channels = wav.getnchannels()
                    data = wav.readframes(frames)
                    pcm = np.frombuffer(data[: len(data) // (2 * channels) * 2 * channels], dtype="<i2")
                    return (pcm.reshape(-1, channels).mean(axis=1) / 32768.0).astype(np.float32)
        except Exception as exc:  # wave raises wave.Error, EOFError, struct.error ... on a damaged header
            raise InferenceError(where, "a readable WAV file", f"{type(exc).__name__}: {exc}") from None
    try:
        out = subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-i",
                "pipe:0",
                "-t",
                f"{max_s + 2 / SAMPLE_RATE:.6f}",
                "-f",
                "s16le",
                "-ac",
                "1",
                "-ar",
                str(SAMPLE_RATE),
                "pipe:1",
            ],
            input=raw,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        raise InferenceError(where, "16 kHz 16-bit WAV (other formats need ffmpeg: apt-get install ffmpeg)") from None
    except subprocess.TimeoutExpired:
        raise InferenceError(where, "audio that ffmpeg decodes within 60 s") from None
    if out.returncode != 0 or len(out.stdout) < 2:
        detail = out.stderr.decode(errors="replace").strip()[:200] or "no audio samples"
        raise InferenceError(where, "audio that ffmpeg can decode (WAV, FLAC, MP3, ...)", detail)
    return (np.frombuffer(out.stdout[: len(out.stdout) // 2 * 2], dtype="<i2") / 32768.0).astype(np.float32)
