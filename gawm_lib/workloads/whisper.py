"""Whisper speech recognition (openai-whisper): WAV/FLAC/MP3 in, text out, with audio seconds per request.

Random weights never emit end-of-text, so the decode length is fixed by ``decode_tokens`` and the temperature fallback
is off: every clip costs the same, which is what a performance study needs.
"""

from __future__ import annotations

import io
import subprocess
import wave
from typing import Any

import numpy as np

from gawm_lib.workloads import samples
from gawm_lib.workloads.base import InferenceError, Workload, load_checkpoint

SAMPLE_RATE = 16_000
# Architecture of each size (openai-whisper's published ModelDimensions); n_vocab differs for English-only models.
DIMENSIONS = {
    "tiny": (80, 384, 6, 4, 51865), "tiny.en": (80, 384, 6, 4, 51864),
    "base": (80, 512, 8, 6, 51865), "base.en": (80, 512, 8, 6, 51864),
    "small": (80, 768, 12, 12, 51865), "medium": (80, 1024, 16, 24, 51865), "large-v3": (128, 1280, 20, 32, 51866),
}


class Whisper(Workload):
    name = "whisper"
    input_name = "audio"
    binary_input = True

    def _build(self):
        import torch
        import whisper
        from whisper.model import ModelDimensions

        size = self.cfg.model_size
        if self.cfg.weights == "pretrained":
            model = whisper.load_model(size, device=self.cfg.device)
            info = {"weights": "pretrained", "source": f"whisper.load_model({size!r})"}
        else:
            n_mels, state, heads, layers, vocab = DIMENSIONS[size]
            dims = ModelDimensions(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=state, n_audio_head=heads,
                                   n_audio_layer=layers, n_vocab=vocab, n_text_ctx=448, n_text_state=state,
                                   n_text_head=heads, n_text_layer=layers)
            torch.manual_seed(0)
            model = whisper.model.Whisper(dims)
            info = {"weights": "random", "seed": 0, "model_size": size}
            if self.cfg.weights != "random":
                checkpoint = load_checkpoint(self.cfg.weights)
                model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))
                model.load_state_dict(checkpoint["model_state_dict"])
                info = {"weights": "path", "path": self.cfg.weights, "model_size": size}
        model = model.eval().to(self.cfg.device)
        if self.cfg.precision != "fp32":
            model = model.to(self.torch_dtype)
        self.options = whisper.DecodingOptions(
            language="en", without_timestamps=True, sample_len=self.cfg.decode_tokens, temperature=0.0,
            fp16=self.cfg.precision == "fp16",
        )
        return model, info

    def decode(self, raw: bytes | str) -> Any:
        if not isinstance(raw, bytes):
            raise InferenceError("audio: expected base64-encoded audio bytes")
        audio = read_audio(raw)
        return audio

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        import torch
        import whisper

        mels = torch.stack([
            whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(a)), n_mels=self.model.dims.n_mels)
            for a in items
        ]).to(self.cfg.device, next(self.model.parameters()).dtype)
        with torch.inference_mode():
            results = whisper.decode(self.model, mels, self.options)
        return [
            {"label": r.text, "score": float(np.exp(r.avg_logprob)), "audio_s": len(a) / SAMPLE_RATE,
             "tokens": len(r.tokens)}
            for r, a in zip(results, items)
        ]

    def output_spec(self) -> list[dict[str, Any]]:
        return [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "audio_s", "datatype": "FP32", "shape": [-1]}, {"name": "tokens", "datatype": "INT32", "shape": [-1]}]

    def sample_items(self, count: int, seed: int) -> list[bytes]:
        return [clip for clip, _text in samples.speech(count, seed)]

    def warmup_item(self) -> bytes:
        return samples.speech(1, 0)[0][0]


def read_audio(raw: bytes) -> np.ndarray:
    """Mono float32 PCM at 16 kHz from WAV (read directly) or anything ffmpeg reads (FLAC, MP3, ...)."""
    if raw[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(raw)) as wav:
                if wav.getsampwidth() == 2 and wav.getframerate() == SAMPLE_RATE:
                    pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, wav.getnchannels())
                    return (pcm.mean(axis=1) / 32768.0).astype(np.float32)
        except (wave.Error, EOFError) as exc:
            raise InferenceError(f"audio: unreadable WAV ({exc})") from None
    try:
        out = subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar",
             str(SAMPLE_RATE), "pipe:1"], input=raw, capture_output=True, timeout=60, check=False,
        )
    except FileNotFoundError:
        raise InferenceError("audio: only 16 kHz 16-bit WAV can be read without ffmpeg (apt-get install ffmpeg)") from None
    if out.returncode != 0 or not out.stdout:
        raise InferenceError(f"audio: ffmpeg cannot decode it: {out.stderr.decode(errors='replace').strip()[:200]}")
    return (np.frombuffer(out.stdout, dtype="<i2") / 32768.0).astype(np.float32)
