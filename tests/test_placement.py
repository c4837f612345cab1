"""Placement of local replicas: which cores or GPU each gets, and the settings errors that stop a run before it starts.

(The processes' real CPU affinity is checked in test_backend_local.py, on real servers.)"""

from __future__ import annotations

import os

import pytest

from gawm_lib.backends.placement import PlacementError, plan, scaling_points
from gawm_lib.config import ConfigError, preflight, validate_params

CORES = sorted(os.sched_getaffinity(0))


def where(plans):
    return [(p.cpus, p.gpu) for p in plans]


def test_exclusive_gives_each_replica_its_own_cores():
    plans = plan("exclusive", 3, 2, "cpu", available=range(8))
    assert where(plans) == [((0, 1), None), ((2, 3), None), ((4, 5), None)]
    assert where(plan("exclusive", 2, 1, "cpu", cpus=[6, 3], available=range(8))) == [((6,), None), ((3,), None)]


def test_shared_puts_every_replica_on_the_same_cores():
    assert where(plan("shared", 4, 2, "cpu", available=range(8))) == [((0, 1), None)] * 4
    assert all(p.env() == {} for p in plan("shared", 2, 1, "cpu", available=[0]))


def test_none_pins_nothing():
    assert where(plan("none", 2, 4, "cpu", available=[0])) == [(None, None), (None, None)]
    assert where(plan("none", 2, 1, "cuda", visible=[])) == [(None, None), (None, None)]


def test_gpu_placement_sets_cuda_visible_devices_per_replica():
    exclusive = plan("exclusive", 2, 1, "cuda", visible=["0", "1", "2"])
    assert [p.env() for p in exclusive] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert all(p.cpus is None for p in exclusive)  # on a GPU, the GPU is placed; cores stay the OS's
    shared = plan("shared", 3, 1, "cuda", gpus=[1], visible=["GPU-aaa", "GPU-bbb"])
    assert [p.gpu for p in shared] == ["GPU-bbb"] * 3  # indices of the visible list, passed on as the parent sees them
    assert plan("exclusive", 1, 1, "cuda", gpus=[2], visible=["4", "5", "6"])[0].to_dict() == {
        "replica": 0,
        "placement": "exclusive",
        "device": "cuda",
        "cpus": None,
        "gpu": "6",
    }


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (
            ("exclusive", 3, 1, "cpu"),
            {"available": [0, 1]},
            "backend.placement exclusive: 3 replica(s) x 1 thread(s) need 3 CPU core(s), 2 available "
            "(this process may use: [0, 1])",
        ),
        (
            ("shared", 2, 4, "cpu"),
            {"cpus": [0, 1], "available": range(8)},
            "backend.placement shared: 4 thread(s) need 4 CPU core(s), 2 available (backend.cpus: [0, 1])",
        ),
        (
            ("exclusive", 1, 1, "cpu"),
            {"cpus": [9], "available": [0, 1]},
            "backend.cpus: cores [9] are not available here (available: [0, 1])",
        ),
        (
            ("exclusive", 2, 1, "cuda"),
            {"visible": ["0"]},
            "backend.placement exclusive: 2 replica(s) need 2 GPU(s), 1 available (visible here: 0)",
        ),
        (("shared", 1, 1, "cuda"), {"visible": []}, "need 1 GPU(s), 0 available (visible here: none)"),
        (
            ("shared", 1, 1, "cuda"),
            {"gpus": [3], "visible": ["0", "1"]},
            "backend.gpus: GPUs [3] are not visible here (2 visible: CUDA_VISIBLE_DEVICES=0,1)",
        ),
        (("spread", 1, 1, "cpu"), {}, "backend.placement: expected one of none, shared, exclusive, got 'spread'"),
    ],
)
def test_placements_that_cannot_be_made_say_which_setting(args, kwargs, message):
    with pytest.raises(PlacementError) as err:
        plan(*args, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "backend, message",
    [
        (
            {"cpus": [CORES[0], CORES[0]]},
            f"backend.cpus: Value error, expected each core once, got [{CORES[0]}, {CORES[0]}]",
        ),
        ({"placement": "spread"}, "backend.placement: Input should be 'none', 'shared' or 'exclusive'"),
        (
            {"kind": "kubernetes", "placement": "shared"},
            "placement, cpus and gpus place local replicas; on kubernetes the device plugin places them",
        ),
    ],
)
def test_settings_that_cannot_be_placed_anywhere_are_invalid(backend, message):
    with pytest.raises(ConfigError) as err:
        validate_params({"backend": backend}, source="p.yaml")
    assert message in str(err.value) and "p.yaml" in str(err.value)


@pytest.mark.parametrize(
    "backend, message",
    [
        (
            {"placement": "exclusive", "replicas": len(CORES) + 1},
            f"p.yaml: backend.placement exclusive: {len(CORES) + 1} replica(s) x 1 thread(s) need {len(CORES) + 1} CPU "
            f"core(s), {len(CORES)} available (this process may use: {CORES}) (workload resnet50)",
        ),
        (
            {"cpus": [max(CORES) + 1]},
            f"p.yaml: backend.cpus: CPU cores [{max(CORES) + 1}] are not available here (available: {CORES})",
        ),
        (
            {"placement": "shared", "cpus": [max(CORES) + 1]},
            f"backend.cpus: CPU cores [{max(CORES) + 1}] are not available here",
        ),
    ],
)
def test_placements_this_machine_cannot_make_are_valid_and_stop_at_the_preflight(backend, message):
    # Valid on any machine (a params file for a bigger one validates here); the run's preflight names the setting.
    cfg = validate_params({"backend": backend}, source="p.yaml")
    with pytest.raises(ConfigError) as err:
        preflight(cfg, source="p.yaml")
    assert message in str(err.value)
    assert str(err.value).count("\n") == 1  # one problem, said once (missing cores are not planned with again)


def test_a_placement_override_is_named_by_the_preflight():
    cfg = validate_params({"backend": {"cpus": [max(CORES) + 1]}})
    with pytest.raises(ConfigError, match=rf"-p backend.cpus=\[{max(CORES) + 1}\]: backend.cpus: CPU cores"):
        preflight(cfg, source="p.yaml", overrides=[f"backend.cpus=[{max(CORES) + 1}]"])


def test_gpu_replicas_are_counted_when_the_run_starts_not_when_validated(monkeypatch):
    # No driver call while validating: a params file for a GPU machine validates on a laptop; the preflight counts
    # the GPUs this process sees (here: as CUDA_VISIBLE_DEVICES says).
    cfg = validate_params(
        {"workloads": [{"name": "resnet50", "device": "cuda"}], "backend": {"placement": "exclusive", "replicas": 8}}
    )
    assert cfg.backend.placement == "exclusive"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(
        ConfigError,
        match=r"p.yaml: backend.placement exclusive: 8 replica\(s\) need 8 GPU\(s\), 2 "
        r"available \(visible here: 0, 1\) \(workload resnet50\)",
    ):
        preflight(cfg, source="p.yaml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(8))))
    preflight(cfg, source="p.yaml")
    unplaced = validate_params({"workloads": [{"name": "resnet50", "device": "cuda"}]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"workloads.0.device: expected a GPU on this machine for device 'cuda'"):
        preflight(unplaced, source="p.yaml")


def test_kubernetes_replicas_are_not_checked_against_local_cores(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    cfg = validate_params(
        {
            "workloads": [
                {"name": "resnet50", "threads": len(CORES) + 1, "weights": "/in/the/image", "device": "cuda"}
            ],
            "backend": {"kind": "kubernetes", "replicas": 64, "gpu": 1, "kubeconfig": str(kubeconfig)},
        }
    )
    preflight(cfg, source="p.yaml")  # cores, GPUs and weights are the cluster's


def test_a_scaling_study_skips_what_cannot_be_placed_and_says_why(monkeypatch):
    cfg = validate_params({"workloads": [{"name": "resnet50", "threads": 1}]})
    too_many = len(CORES) + 1
    points, skipped = scaling_points(cfg.workloads, cfg.backend, [too_many, 1], ["shared", "exclusive"])
    assert points == [
        {"backend.placement": "exclusive", "backend.replicas": 1},  # one replica: one point
        {"backend.placement": "shared", "backend.replicas": too_many},
    ]
    assert skipped == [
        f"exclusive x {too_many} replicas skipped: backend.placement exclusive: {too_many} replica(s) "
        f"x 1 thread(s) need {too_many} CPU core(s), {len(CORES)} available (this process may use: "
        f"{CORES})"
    ]
    gpu = validate_params({"workloads": [{"name": "resnet50", "device": "cuda"}], "backend": {"gpus": []}})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the GPUs this process sees are the ones placed on
    points, skipped = scaling_points(gpu.workloads, gpu.backend, [1, 2], ["shared", "exclusive"])
    assert [p["backend.placement"] for p in points] == ["exclusive", "shared"]
    assert skipped == [
        "exclusive x 2 replicas skipped: backend.placement exclusive: 2 replica(s) need 2 GPU(s), "
        "1 available (visible here: 0)"
    ]


@pytest.mark.parametrize(
    "replicas, placements, message",
    [
        ([], ["shared"], "replicas: expected distinct whole numbers from 1 to 64"),
        ([1, 1], ["shared"], "replicas: expected distinct whole numbers"),
        ([1.5], ["shared"], "replicas: expected distinct whole numbers"),
        ("2", ["shared"], "replicas: expected distinct whole numbers"),
        ([1, 2], ["spread"], "placements: expected 'shared' and/or 'exclusive'"),
        ([1, 2], [], "placements: expected 'shared' and/or 'exclusive'"),
    ],
)
def test_scaling_study_parameters_are_checked(replicas, placements, message):
    cfg = validate_params({})
    with pytest.raises(ValueError, match=message):
        scaling_points(cfg.workloads, cfg.backend, replicas, placements)
    kube = validate_params({"backend": {"kind": "kubernetes"}})
    with pytest.raises(ValueError, match="on kubernetes the device plugin places replicas"):
        scaling_points(kube.workloads, kube.backend, [1], ["shared"])
