"""Sample request items made from real data, seeded, with a spread of sizes.

- photos: real photographs shipped with matplotlib (``grace_hopper.jpg``) and other sample images, randomly cropped and
  rescaled (short side 128-640 px) and encoded as JPEG;
- sentences: real English sentences (``data/sentences.txt``), cut or joined for a spread of lengths;
- speech: one to three sentences with known transcripts (``data/transcripts.txt``) spoken by espeak-ng at a random
  speed, resampled to 16 kHz WAV, cached under ``~/.cache/gawm/speech``; or clips of one exact length
  (:func:`speech_clips`), sentences spoken one after another and cut there.
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from gawm_lib import paths


def _photo_sources() -> list[Path]:
    import matplotlib

    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    found = [
        p for p in (sample_data / "grace_hopper.jpg", sample_data / "Minduka_Present_Blue_Pack.png") if p.is_file()
    ]
    if not found:
        raise FileNotFoundError(f"no sample photos in {sample_data}: is matplotlib installed with its sample data?")
    return found


@functools.lru_cache(maxsize=8)
def photos(count: int, seed: int) -> list[bytes]:
    """``count`` JPEG images from real photos, random crops with short sides of 128-640 px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in _photo_sources()]
    out = []
    for _ in range(count):
        image = sources[rng.integers(len(sources))]
        w, h = image.size
        frac = rng.uniform(0.6, 1.0)
        cw, ch = int(w * frac), int(h * frac)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch))
        short = int(rng.integers(128, 641))
        scale = short / min(crop.size)
        crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))))
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _lines(name: str) -> list[str]:
    return [line.strip() for line in (paths.PACKAGE_DATA / name).read_text().splitlines() if line.strip()]


def sentences(count: int, seed: int) -> list[str]:
    """``count`` texts: one to three real sentences each, for a spread of sequence lengths."""
    rng = np.random.default_rng(seed)
    pool = _lines("sentences.txt")
    return [" ".join(rng.choice(pool, size=int(rng.integers(1, 4)), replace=False)) for _ in range(count)]


def speech(count: int, seed: int, max_sentences: int = 3) -> list[tuple[bytes, str]]:
    """``count`` (16 kHz mono WAV, transcript) pairs: one to ``max_sentences`` known sentences spoken by espeak-ng at
    a random speed (130-190 words/min), about 2 to 15 s each."""
    rng = np.random.default_rng(seed)
    pool = _lines("transcripts.txt")
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(pool, size=int(rng.integers(1, max_sentences + 1)), replace=False))
        words_per_min = int(rng.integers(130, 191))
        out.append((synthesise(text, words_per_min), text))
    return out


def speech_clips(count: int, seed: int, seconds: float) -> list[bytes]:
    """``count`` 16 kHz mono WAV clips of exactly ``seconds`` of speech: known sentences in a random order, each spoken
    by espeak-ng at the clip's random speed (130-190 words/min) with 0.25 s between them, until the clip is full."""
    if not 0 < seconds <= 30:
        raise ValueError(f"seconds: expected a clip length above 0 and up to 30 s (one Whisper window), got {seconds}")
    rng = np.random.default_rng(seed)
    pool = _lines("transcripts.txt")
    length = round(seconds * 16_000)
    gap = np.zeros(4_000, dtype="<i2")
    out = []
    for _ in range(count):
        words_per_min = int(rng.integers(130, 191))
        parts, have = [], 0
        while have < length:
            for text in rng.permutation(pool):
                parts += [_pcm(synthesise(str(text), words_per_min)), gap]
                have += len(parts[-2]) + len(gap)
                if have >= length:
                    break
        out.append(_wav(np.concatenate(parts)[:length]))
    return out


def _pcm(wav_bytes: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def _wav(pcm16: np.ndarray, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm16.astype("<i2").tobytes())
    return buffer.getvalue()


def synthesise(text: str, words_per_min: int = 150) -> bytes:
    """Speak ``text`` with espeak-ng; 16 kHz 16-bit mono WAV bytes, cached by content."""
    key = hashlib.sha256(f"{text}|{words_per_min}".encode()).hexdigest()[:16]
    cached = paths.cache_dir() / "speech" / f"{key}.wav"
    if cached.is_file():
        return cached.read_bytes()
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is needed to make speech samples: apt-get install espeak-ng")
    out = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", str(words_per_min), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=60,
    )
    with wave.open(io.BytesIO(out.stdout)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    from scipy.signal import resample_poly

    g = np.gcd(16_000, rate)
    resampled = resample_poly(pcm.astype(np.float32), 16_000 // g, rate // g)
    pcm16 = np.clip(resampled, -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(pcm16.tobytes())
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(cached)
    return buffer.getvalue()
