"""GPU paths: CUDA-graph replay gives the eager answers, staged copies, the served model on a GPU, NVML metrics.

Skipped where torch sees no CUDA GPU (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import numpy as np
import pytest

# fp32 convolutions run in TF32 by default on Ampere and later, with algorithms that depend on the batch size: a
# server's answers then differ from an eager reference by a few per cent, more than the tolerances below (the served
# test failed so on an H200). cuDNN and cuBLAS read this before their first use, and the servers inherit it.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from gawm_lib.config import WorkloadConfig  # noqa: E402
from gawm_lib.workloads import build_workload, samples  # noqa: E402


def loaded(**settings):
    workload = build_workload(WorkloadConfig(device="cuda", warmup_batches=1, **settings))
    workload.load()
    return workload


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resnet_graph_replay_matches_eager_for_every_padded_size(precision):
    common = dict(name="resnet50", precision=precision, channels_last=True, max_batch_size=8, batch_sizes=[2, 4])
    eager, graphed = loaded(**common), loaded(**common, cuda_graphs=True)
    assert len(graphed.device_forward.graphs) == 3  # 2, 4 and 8, captured by the warm-up
    pixels = list(graphed.sample_pixels(7, seed=3))
    for n in (1, 3, 7):  # padded to 2, 4, 8
        want, got = eager.predict(pixels[:n]), graphed.predict(pixels[:n])
        assert [a["top_k_indices"] for a in got] == [a["top_k_indices"] for a in want]
        np.testing.assert_allclose(
            [a["top_k_scores"] for a in got], [a["top_k_scores"] for a in want], rtol=1e-2, atol=1e-4
        )
    # Replays reuse static buffers: an earlier answer must not change when later batches run.
    first = graphed.predict(pixels[:2])
    graphed.predict(pixels[2:4])
    assert first == graphed.predict(pixels[:2])


def test_distilbert_graph_replay_matches_eager_and_pads_to_max_seq_len():
    common = dict(name="distilbert", precision="bf16", max_batch_size=16, batch_sizes=[4], max_seq_len=64)
    eager, graphed = loaded(**common), loaded(**common, cuda_graphs=True)
    texts = samples.sentences(11, seed=2)
    ids = graphed.tokenize(texts)
    staged, tokens = graphed.prepare(ids)
    assert staged.get()["input_ids"].shape == (16, 64) and tokens == [len(i) for i in ids]
    want, got = eager.predict(ids), graphed.predict(ids)
    assert [a["label"] for a in got] == [a["label"] for a in want]
    np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in want], atol=2e-2)


def test_a_graphed_gpu_server_answers_concurrent_clients_and_exports_gpu_metrics(tmp_path):
    import httpx

    from gawm_lib.backends import open_backend
    from gawm_lib.config import BackendConfig
    from gawm_lib.workloads.oip import encode_request

    cfg = WorkloadConfig(
        name="resnet50",
        device="cuda",
        precision="fp32",
        cuda_graphs=True,
        max_batch_size=16,
        batch_sizes=[4],
        max_queue_delay_ms=5,
    )
    reference = loaded(**cfg.model_dump(exclude={"warmup_batches", "device"}))
    pixels = reference.sample_pixels(24, seed=9)
    want = [a for half in (pixels[:12], pixels[12:]) for a in reference.predict(list(half))]
    with open_backend(cfg, BackendConfig(replicas=1), tmp_path) as backend:
        url = f"{backend.replicas[0].url}/v2/models/resnet50/infer"

        def one(i):
            content, headers = encode_request(
                [("pixel_values", "UINT8", [2, 3, 224, 224], pixels[i : i + 2])], binary=True
            )
            return httpx.post(url, content=content, headers=headers, timeout=60)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(0, 24, 2)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        scores, indices = [], []
        for a in answers:
            outputs = {o["name"]: np.reshape(o["data"], o["shape"]) for o in a.json()["outputs"]}
            scores.extend(outputs["top_k_scores"].tolist())
            indices.extend(outputs["top_k_indices"].tolist())
        # Each answer belongs to its own image: scores agree whatever batch it ran in; the top class agrees wherever
        # it is clear (random weights leave near ties, which other batch sizes' kernels may order differently).
        np.testing.assert_allclose(scores, [a["top_k_scores"] for a in want], rtol=5e-3, atol=1e-6)
        # ...and random weights give every image the same top class, so the scores are what tell them apart
        expected = np.array([a["top_k_scores"] for a in want])
        distance = np.abs(np.array(scores)[:, None, :] - expected[None, :, :]).sum(axis=2)
        assert (distance.argmin(axis=1) == np.arange(len(want))).all(), distance.round(3)
        clear = [i for i, a in enumerate(want) if a["top_k_scores"][0] - a["top_k_scores"][1] > 1e-4]
        assert clear and [indices[i][0] for i in clear] == [want[i]["top_k_indices"][0] for i in clear]
        time.sleep(0.2)
        metrics = httpx.get(f"{backend.replicas[0].url}/metrics").text
        assert "gawm_gpu_torch_allocated_bytes" in metrics and "gawm_gpu_power_watts" in metrics
        assert 'gawm_batch_size_count{model="resnet50"' in metrics
