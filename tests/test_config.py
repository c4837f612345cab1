"""Settings: unknown keys, wrong types and out-of-range values are refused with the file, key path and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from gawm_lib.config import ConfigError, ExperimentConfig, apply_override, load_params

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_key_and_close_match(tmp_path):
    path = write(tmp_path, "load:\n  levls: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert f"{path}: load.levls: unknown key 'levls' (did you mean 'levels'?)" in message
    assert "allowed keys: arrival_seed, levels" in message


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    path = write(tmp_path, "backend:\n  replicas: two\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: backend.replicas: Input should be a valid integer.*got 'two'"):
        load_params(path)


def test_out_of_range_values_in_nested_lists(tmp_path):
    path = write(tmp_path, "workloads:\n  - name: whisper\n    max_batch_size: 0\nload:\n  levels: [1, -3]\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert "2 problems" in message
    assert "workloads.0.max_batch_size: Input should be greater than or equal to 1 (got 0)" in message
    assert "load.levels.1: Input should be greater than 0 (got -3" in message


def test_unknown_workload_and_non_loopback_host(tmp_path):
    path = write(tmp_path, "workloads: [resnet51]\nbackend:\n  host: 10.0.0.5\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "workloads.0.name: Input should be 'resnet50', 'distilbert' or 'whisper' (got 'resnet51')" in str(err.value)
    assert "backend.host: Value error, expected a loopback address" in str(err.value)


def test_yaml_syntax_and_top_level_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="exp.yaml: not valid YAML"):
        load_params(write(tmp_path, "load: [1,\n"))
    with pytest.raises(ConfigError, match="exp.yaml: expected a mapping of settings at the top level, got list"):
        load_params(write(tmp_path, "- 1\n"))
    with pytest.raises(ConfigError, match="missing.yaml: cannot read the params file"):
        load_params(tmp_path / "missing.yaml")


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "name: sweep\nload:\n  step_duration_s: 10\n  levels: [1, 2]\n")
    cfg, requested = load_params(path, ["load.levels=[4, 8]", "backend.replicas=3"])
    assert cfg.name == "sweep"  # from the file
    assert cfg.load.step_duration_s == 10  # from the file
    assert cfg.load.levels == [4.0, 8.0]  # override beats file
    assert cfg.backend.replicas == 3  # override beats default
    assert cfg.load.warmup_s == ExperimentConfig().load.warmup_s  # default
    assert requested == {"name": "sweep", "load": {"step_duration_s": 10, "levels": [4, 8]}, "backend": {"replicas": 3}}


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, "workloads: [resnet50]\n")
    with pytest.raises(ConfigError, match=r"-p load.step_duration_s=-1: load.step_duration_s: Input should be greater"):
        load_params(path, ["load.step_duration_s=-1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_params(path, ["load.step_duration_s"])
    with pytest.raises(ConfigError, match=r"workloads.5: expected an index below 1"):
        load_params(path, ["workloads.5.threads=2"])


def test_override_into_a_list_item():
    tree = apply_override({"workloads": [{"name": "resnet50"}]}, "workloads.0.max_batch_size=16")
    assert tree == {"workloads": [{"name": "resnet50", "max_batch_size": 16}]}


def test_closed_loop_levels_are_whole_users_and_workloads_unique(tmp_path):
    with pytest.raises(ConfigError, match="closed_loop levels are numbers of concurrent users"):
        load_params(write(tmp_path, "load:\n  levels: [1.5]\n"))
    with pytest.raises(ConfigError, match="each workload may appear once"):
        load_params(write(tmp_path, "workloads: [resnet50, resnet50]\n"))


def test_every_shipped_params_file_is_valid():
    from gawm_lib import suite

    files = sorted((ROOT / "params").glob("*.yaml"))
    assert files, "params/ has no files"
    for path in files:
        if suite.is_suite_file(path):  # a suite: every point of it must be valid
            spec = suite.load_suite(path)
            configs = suite.validate_points(suite.expand(spec))
            assert all((ROOT / nb).is_file() for nb in spec.report), f"{path}: report notebook missing"
        else:
            configs = [load_params(path)[0]]
        for cfg in configs:
            assert (ROOT / cfg.notebook).is_file(), f"{path}: notebook {cfg.notebook} missing"


def shipped_configs():
    """(file, settings) of every params file in params/, every point of a suite included."""
    from gawm_lib import suite

    for path in sorted((ROOT / "params").glob("*.yaml")):
        if suite.is_suite_file(path):
            for cfg in suite.validate_points(suite.expand(suite.load_suite(path))):
                yield path.name, cfg
        else:
            yield path.name, load_params(path)[0]


def test_cluster_examples_render_their_manifests_without_a_cluster():
    """The kubernetes params files give, through the renderer the backend uses, Deployments that the Kubernetes
    schema accepts and that ask for what the file says (GPUs, RuntimeClass, node selector, tolerations, replicas)."""
    import kubernetes_validate

    from gawm_lib.cluster import render_server

    rendered = {}
    for name, cfg in shipped_configs():
        if cfg.backend.kind != "kubernetes":
            continue
        for workload in cfg.workloads:
            for obj in render_server(workload, cfg.backend):
                kubernetes_validate.validate(obj, "1.34.0", strict=True)
                if obj["kind"] == "Deployment":
                    rendered.setdefault(name, []).append((workload, obj))
    assert {"cluster_cpu.yaml", "cluster_gpu_time_slicing.yaml", "suite_cluster_gpu_time_slicing.yaml"} <= set(rendered)
    for _, deployment in rendered["cluster_cpu.yaml"]:
        pod = deployment["spec"]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits == {"cpu": "4", "memory": "4Gi"} and "runtimeClassName" not in pod and "tolerations" not in pod
    for workload, deployment in rendered["cluster_gpu_time_slicing.yaml"]:
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and workload.device == "cuda"
        assert pod["runtimeClassName"] == "nvidia" and pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
        assert container["image"] == "localhost/gawm-model-server:0.1.0"
    replicas = sorted({d["spec"]["replicas"] for _, d in rendered["suite_cluster_gpu_time_slicing.yaml"]})
    assert replicas == [1, 2, 4, 6]  # the suite's grid, one rollout per point


MISSING_KUBECONFIG = "/nowhere/on/this/machine/kubeconfig"  # e.g. a path on a cluster's login node


def test_a_cluster_params_file_validates_anywhere_and_the_preflight_names_what_is_missing_here():
    """Validation is pure (types, ranges, names); the kubeconfig file is the run's machine's business."""
    from gawm_lib.config import preflight

    overrides = [f"backend.kubeconfig={MISSING_KUBECONFIG}"]
    for name in ("cluster_cpu.yaml", "cluster_gpu_time_slicing.yaml"):
        cfg, _ = load_params(ROOT / "params" / name, overrides)
        assert cfg.backend.kubeconfig == MISSING_KUBECONFIG
        with pytest.raises(ConfigError) as err:
            preflight(cfg, source=f"params/{name}", overrides=overrides)
        message = str(err.value)
        assert (
            f"-p backend.kubeconfig={MISSING_KUBECONFIG}: backend.kubeconfig: expected an existing kubeconfig "
            f"file on this machine, got '{MISSING_KUBECONFIG}'"
        ) in message
        assert "cores" not in message and "GPU" not in message  # a kubernetes run checks no local cores or GPUs
    with pytest.raises(
        ConfigError,
        match=r"-p backend.kubeconfig=: backend.kubeconfig: Value error, expected a "
        r"kubeconfig file path",
    ):
        load_params(ROOT / "params" / "cluster_cpu.yaml", ["backend.kubeconfig="])  # an empty name is still invalid


def test_a_cluster_params_file_written_for_the_cluster_names_its_file(tmp_path):
    from gawm_lib.config import preflight

    text = (
        (ROOT / "params" / "cluster_cpu.yaml")
        .read_text()
        .replace("  kind: kubernetes\n", f"  kind: kubernetes\n  kubeconfig: {MISSING_KUBECONFIG}\n")
    )
    cfg, _ = load_params(write(tmp_path, text))
    with pytest.raises(
        ConfigError,
        match=rf"exp.yaml: backend.kubeconfig: expected an existing kubeconfig file on "
        rf"this machine, got '{MISSING_KUBECONFIG}': no such file",
    ):
        preflight(cfg, source=str(tmp_path / "exp.yaml"))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    preflight(cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"kubeconfig": str(kubeconfig)})}))


def test_a_local_run_needs_no_kubeconfig_and_the_preflight_lists_every_problem(tmp_path):
    from gawm_lib.config import preflight

    cfg, _ = load_params(
        write(
            tmp_path,
            "workloads:\n  - name: resnet50\n    weights: /no/such/weights.pt\n"
            "load:\n  scenario: trace\n  levels: [1]\n  trace_path: /no/such/trace.csv\n"
            "prometheus:\n  binary: /no/such/prometheus\n",
        )
    )
    with pytest.raises(ConfigError) as err:
        preflight(cfg, source="exp.yaml")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("this machine cannot run these settings (3 problems")
    assert lines[1:] == [
        "  exp.yaml: workloads.0.weights: expected 'random', 'pretrained' or an existing path on this machine, got "
        "'/no/such/weights.pt': no such file or directory",
        "  exp.yaml: load.trace_path: no trace file at '/no/such/trace.csv'",
        "  exp.yaml: prometheus.binary: expected the Prometheus binary on this machine, got '/no/such/prometheus': not "
        "found or not executable (install it with `apt-get install prometheus`, point prometheus.binary at one, or "
        "set prometheus.enabled: false)",
    ]
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    local = load_params(
        None, base={"workloads": [{"name": "resnet50", "weights": str(weights)}], "prometheus": {"enabled": False}}
    )[0]
    preflight(local, source="exp.yaml")  # no kubeconfig needed, none checked


def test_gawm_run_of_a_cluster_file_exits_2_naming_the_kubeconfig_before_starting_anything(
    tmp_path, monkeypatch, capsys
):
    from gawm_lib import cli

    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    code = cli.run_params(ROOT / "params" / "cluster_cpu.yaml", [f"backend.kubeconfig={MISSING_KUBECONFIG}"])
    assert code == cli.EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert err.startswith("gawm: this machine cannot run these settings")
    assert f"-p backend.kubeconfig={MISSING_KUBECONFIG}: backend.kubeconfig: expected an existing kubeconfig" in err
    assert not (tmp_path / "raw").exists()  # no run directory: nothing started


def test_a_suite_preflights_every_point_before_the_first_runs(tmp_path, monkeypatch, capsys):
    from gawm_lib import cli, suite

    spec = tmp_path / "suite.yaml"
    spec.write_text(
        f"suite: s\nruns:\n  - params: params/quick.yaml\n  - params: params/cluster_cpu.yaml\n"
        f"    overrides: [backend.kubeconfig={MISSING_KUBECONFIG}]\n    grid:\n"
        f"      backend.replicas: [1, 2]\n"
    )
    points = suite.expand(suite.load_suite(spec))
    configs = suite.validate_points(points)  # pure: valid here
    with pytest.raises(ConfigError) as err:
        suite.preflight_points(points, configs)
    assert str(err.value).count("backend.kubeconfig: expected an existing kubeconfig file") == 2  # both points
    assert "params/quick.yaml" not in str(err.value)  # the local point is runnable here
    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    assert cli.run_params(spec, []) == 2
    err = capsys.readouterr().err
    assert (
        f"params/cluster_cpu.yaml backend.kubeconfig={MISSING_KUBECONFIG} backend.replicas=2: backend.kubeconfig: "
        f"expected an existing kubeconfig file" in err
    )  # each point named by its key
    assert not (tmp_path / "raw").exists() and not suite.state_path("s").exists()  # nothing started
