"""A transcript cut at ``decode_tokens`` is never silent: per clip in the answer, per request in the load records, and
summed in the step summary. Random weights never emit end-of-text, so with them every clip is cut (and says so)."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from gawm_lib import summary
from gawm_lib.backends import open_backend
from gawm_lib.config import BackendConfig, LoadConfig, WorkloadConfig
from gawm_lib.loadgen import COLUMNS, LoadSpec, run_load, write_bodies
from gawm_lib.workloads import build_workload, samples

pytestmark = pytest.mark.integration


def test_truncated_clips_are_in_the_answer_the_records_and_the_summary(tmp_path):
    cfg = WorkloadConfig(
        name="whisper", model_size="tiny", decode_tokens=2, max_batch_size=2, max_queue_delay_ms=1, warmup_batches=0
    )
    workload = build_workload(cfg)
    clips = [clip for clip, _ in samples.speech(2, seed=5, max_sentences=1)]
    with open_backend(cfg, BackendConfig(replicas=1), tmp_path / "logs") as backend:
        url = backend.replicas[0].url
        meta = httpx.get(f"{url}/v2/models/whisper", timeout=10).json()
        assert meta["parameters"]["weights"]["decode_tokens"] == 2
        assert meta["parameters"]["weights"]["decode_tokens_from"] == "settings"
        answer = httpx.post(f"{url}/v2/models/whisper/infer", json=workload.request_body(clips), timeout=120).json()
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["truncated"]["datatype"] == "BOOL" and outputs["truncated"]["data"] == [True, True]
        assert outputs["tokens"]["data"] == [2, 2] and answer["parameters"]["truncated"] == 2

        bodies = write_bodies(tmp_path / "bodies.jsonl", [workload.request_body([c]) for c in clips])
        spec = LoadSpec(
            workload="whisper",
            model="whisper",
            targets=[url],
            bodies_path=str(bodies),
            out_dir=str(tmp_path / "requests.parquet"),
            load=LoadConfig(levels=[1], step_duration_s=0.5, warmup_s=0, min_requests_per_step=3).model_dump(),
        )
        run_load(spec, tmp_path, progress=False)
    rows = pd.read_parquet(spec.out_dir)
    assert list(rows.columns) == list(COLUMNS) and (rows["error"] == "").all()
    assert (rows["truncated"] == rows["items"]).all()  # every clip cut: random weights never end on their own
    table = summary.summarise(summary.read_requests(spec.out_dir))
    assert table.iloc[0]["truncated"] == table.iloc[0]["ok"] >= 3


def test_random_whisper_defaults_to_eight_tokens_and_says_so():
    w = build_workload(WorkloadConfig(name="whisper", model_size="tiny", warmup_batches=0))
    w.load()
    assert w.weights_info["decode_tokens"] == 8 and w.weights_info["decode_tokens_from"] == "default for random weights"
    answers = w.predict([w.decode_item(samples.speech(1, seed=2, max_sentences=1)[0][0])])
    assert answers[0]["tokens"] == 8 and answers[0]["truncated"]
    assert w.request_stats(answers)["truncated"] == 1
