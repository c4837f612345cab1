"""The model-server objects as plain dicts, rendered from settings: one Deployment + Service per workload, and the
namespace and access objects around them. ``k8s/base`` is written from here, so the backend and ``kubectl apply -k``
deploy the same thing::

    python -m gawm_lib.cluster --write k8s/base    # regenerate (a test fails when the two drift)

Workload settings reach the server as environment variables that its ``--settings`` argument expands (``$(GAWM_...)``,
done by the kubelet), so a kustomize overlay can change one setting by patching one variable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from gawm_lib.config import BackendConfig, WorkloadConfig

MODEL_SERVER = "gawm-model-server"  # app.kubernetes.io/name of every model-server object
CONTAINER = "server"
RUN_AS = 10001  # the image's non-root user (k8s/Dockerfile)
GPU_RESOURCE = "nvidia.com/gpu"
WORKLOAD_LABEL = "gawm/workload"
MANAGED_BY = "app.kubernetes.io/managed-by"
# WorkloadConfig field -> environment variable; the server's --settings JSON is built from these.
SETTINGS_ENV = {
    "weights": "GAWM_WEIGHTS",
    "device": "GAWM_DEVICE",
    "precision": "GAWM_PRECISION",
    "threads": "GAWM_THREADS",
    "max_batch_size": "GAWM_MAX_BATCH_SIZE",
    "max_queue_delay_ms": "GAWM_MAX_QUEUE_DELAY_MS",
    "warmup_batches": "GAWM_WARMUP_BATCHES",
}
WORKLOAD_SETTINGS = {"distilbert": ("max_seq_len",), "whisper": ("model_size", "decode_tokens"), "resnet50": ()}
# Where the image keeps its baked weights (read-only) and where the server may write (emptyDirs).
IMAGE_ENV = {
    "HF_HOME": "/opt/gawm/weights/huggingface",
    "TORCH_HOME": "/opt/gawm/weights/torch",
    "XDG_CACHE_HOME": "/opt/gawm/weights",
    "HF_HUB_OFFLINE": "1",
    "GAWM_CACHE_DIR": "/var/cache/gawm",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "TRITON_CACHE_DIR": "/tmp/triton",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor",
    "TOKENIZERS_PARALLELISM": "false",
}
WRITABLE = {"tmp": ("/tmp", "1Gi"), "cache": ("/var/cache/gawm", "2Gi")}
# The server drains on SIGTERM (answers what it admitted, refuses new work) within its shutdown_grace_s (20 s by
# default); the kubelet's grace period leaves it that and a margin before SIGKILL.
GRACE_MARGIN_S = 10


def termination_grace_s(workload: WorkloadConfig) -> int:
    """The pod's ``terminationGracePeriodSeconds``: the server's drain time and a margin (30 s by default)."""
    return math.ceil(getattr(workload, "shutdown_grace_s", 20.0)) + GRACE_MARGIN_S


HOST_PYTHON = "host-python"  # backend.image_mode for a local or CI node that shares this machine's files


def deployment_name(workload: str) -> str:
    return f"gawm-{workload}"


def selector_of(workload: str) -> dict[str, str]:
    """The labels that select one workload's pods (the Deployment's immutable selector)."""
    return {"app.kubernetes.io/name": MODEL_SERVER, "app.kubernetes.io/instance": deployment_name(workload)}


def _labels(workload: str, managed_by: str | None) -> dict[str, str]:
    labels = {
        **selector_of(workload),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "gawm",
        WORKLOAD_LABEL: workload,
    }
    if managed_by:
        labels[MANAGED_BY] = managed_by
    return labels


def _env_value(value: Any) -> str:
    if value is None:  # JSON's null in the --settings argument (e.g. decode_tokens: the weights' default)
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def settings_env(workload: WorkloadConfig) -> tuple[list[dict[str, str]], str]:
    """The settings as environment variables, and the ``--settings`` JSON template that refers to them.

    The settings people tune per cluster (device, precision, threads, batching, weights and the workload's own) are
    variables; any other setting that differs from its default is written into the template as it is, so the server
    gets every setting the run asked for."""
    fields = [*SETTINGS_ENV, *WORKLOAD_SETTINGS[workload.name]]
    env, parts = [], []
    for name in fields:
        var = SETTINGS_ENV.get(name, f"GAWM_{name.upper()}")
        value = getattr(workload, name)
        env.append({"name": var, "value": _env_value(value)})
        parts.append(f'"{name}": "$({var})"' if isinstance(value, str) else f'"{name}": $({var})')
    defaults = WorkloadConfig(name=workload.name)
    for name in type(workload).model_fields:
        if name != "name" and name not in fields and getattr(workload, name) != getattr(defaults, name):
            literal = json.dumps(workload.model_dump(mode="json")[name]).replace("$(", "$$(")  # no kubelet expansion
            parts.append(f'"{name}": {literal}')
    return env, "{" + ", ".join(parts) + "}"


def _probe(path: str, period_s: int, failures: int, timeout_s: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": timeout_s,
    }


PROJECT_DIR = Path(__file__).resolve().parents[2]  # the project (or installed package's parent) gawm runs from


def host_python_paths() -> dict[str, str]:
    """What a ``host-python`` pod mounts read-only from the node (this machine), name -> path, and the interpreter:
    ``/usr`` (the C library and the tools Python links against), the Python installation (``sys.base_prefix``) where
    it is not under ``/usr``, the virtual environment (``sys.prefix``) and the project directory, each once (a path
    inside another is not mounted again). ``python`` is the interpreter path the container runs."""
    candidates = {"usr": "/usr", "python": sys.base_prefix, "venv": sys.prefix, "project": str(PROJECT_DIR)}
    resolved = {name: raw if name == "usr" else str(Path(raw).resolve()) for name, raw in candidates.items()}

    def inside(path: str, other: str) -> bool:
        return path != other and path.startswith(other.rstrip("/") + "/")

    mounts: dict[str, str] = {}
    for name, path in resolved.items():
        if path not in mounts.values() and not any(inside(path, other) for other in resolved.values()):
            mounts[name] = path
    return mounts


def host_python_interpreter() -> str:
    """The interpreter a ``host-python`` pod runs: this virtual environment's ``bin/python`` (its symlink resolves
    into the mounted Python installation, and its ``site-packages`` holds gawm, installed editable or not)."""
    return str(Path(sys.prefix) / "bin" / "python")


def _host_python(container: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    """Turn the pod into one that runs this machine's Python from read-only hostPath mounts (``image_mode:
    host-python``): the image only has to hold the mount points' parents (a tiny image with the merged-/usr links),
    the working directory is the project, and the pod resolves names through the node (``dnsPolicy: Default``: a
    test node has no cluster DNS)."""
    mounts = host_python_paths()
    container["command"] = [host_python_interpreter(), "-m", "gawm_lib.server"]
    container["workingDir"] = mounts.get("project", str(PROJECT_DIR))
    container["env"] = [e for e in container["env"] if e["name"] not in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME")]
    container["env"] += [
        {"name": "HOME", "value": "/tmp"},
        {"name": "USER", "value": "gawm"},  # the tiny image's /etc/passwd lacks the pod's user (getpass)
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},  # the mounts are read-only
        {"name": "XDG_CACHE_HOME", "value": "/var/cache/gawm"},
    ]
    container["volumeMounts"] += [
        {"name": f"host-{name}", "mountPath": path, "readOnly": True} for name, path in mounts.items()
    ]
    pod_spec["volumes"] += [
        {"name": f"host-{name}", "hostPath": {"path": path, "type": "Directory"}} for name, path in mounts.items()
    ]
    pod_spec["dnsPolicy"] = "Default"


def render_server(workload: WorkloadConfig, backend: BackendConfig, managed_by: str | None = "gawm") -> list[dict]:
    """A Deployment and a ClusterIP Service for ``workload`` in ``backend.namespace``.

    ``backend.image_mode: host-python`` (a local or CI node sharing this machine's files) runs the server from this
    machine's Python through read-only hostPath mounts (:func:`host_python_paths`) instead of the model-server image
    (k8s/Dockerfile), which stays the way for real clusters."""
    name, port = deployment_name(workload.name), backend.port
    labels = _labels(workload.name, managed_by)
    env, settings = settings_env(workload)
    env += [
        {"name": "OMP_NUM_THREADS", "value": "$(GAWM_THREADS)"},
        {"name": "MKL_NUM_THREADS", "value": "$(GAWM_THREADS)"},
    ]
    env += [{"name": k, "value": v} for k, v in IMAGE_ENV.items()]
    cpu = backend.cpu or str(workload.threads)
    quantities = {"cpu": cpu, "memory": backend.memory}
    if backend.gpu:
        quantities[GPU_RESOURCE] = str(backend.gpu)
    container = {
        "name": CONTAINER,
        "image": backend.image,
        "imagePullPolicy": backend.image_pull_policy,
        "command": ["python", "-m", "gawm_lib.server"],
        "args": ["--workload", workload.name, "--host", "0.0.0.0", "--port", str(port), "--settings", settings],
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        # The process imports torch before it listens: the startup probe allows for that (5 min), readiness follows
        # the model load, liveness only the HTTP loop.
        "startupProbe": _probe("/v2/health/live", 2, 150, 2),
        "readinessProbe": _probe("/v2/health/ready", 2, 2, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3, 5),
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": vol, "mountPath": path} for vol, (path, _) in WRITABLE.items()],
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": backend.service_account,
        "automountServiceAccountToken": False,  # the server never talks to the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_s(workload),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": vol, "emptyDir": {"sizeLimit": size}} for vol, (_, size) in WRITABLE.items()],
    }
    if backend.image_mode == HOST_PYTHON:
        _host_python(container, pod_spec)
    tolerations = [dict(t) for t in backend.tolerations]
    if backend.gpu:
        if backend.runtime_class:
            pod_spec["runtimeClassName"] = backend.runtime_class
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if backend.node_selector:
        pod_spec["nodeSelector"] = dict(backend.node_selector)
    # GPUs are usually all taken: replace a pod before starting its successor; CPU replicas surge instead.
    rolling = {"maxSurge": 0, "maxUnavailable": 1} if backend.gpu else {"maxSurge": 1, "maxUnavailable": 0}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": backend.namespace, "labels": labels},
        "spec": {
            "replicas": backend.replicas,
            "selector": {"matchLabels": selector_of(workload.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": backend.namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_of(workload.name),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [deployment, service]


def render_namespace(namespace: str) -> dict:
    """The namespace, held to the Pod Security Standards' ``restricted`` level where the cluster enforces them."""
    labels = {"app.kubernetes.io/part-of": "gawm"}
    labels.update({f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")})
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}


# What the workbench does in its namespace, and nothing more: no Secrets, no ConfigMaps, no exec, nothing cluster-wide.
ROLE_RULES = [
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "update", "patch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["services"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    # delete: pods that never started (an image that cannot be pulled) are removed at once on teardown
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def render_access(namespace: str, service_account: str = "gawm") -> list[dict]:
    """The workbench's ServiceAccount and a namespaced Role + RoleBinding with only what the backend needs."""
    meta = {"name": service_account, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "gawm"}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta), "rules": ROLE_RULES},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]


HEADER = "# Generated by `python -m gawm_lib.cluster --write k8s/base`: edit gawm_lib/cluster/manifests.py instead.\n"


class _Dumper(yaml.SafeDumper):
    """YAML without anchors and aliases (shared label dicts), as people write it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def base_files(namespace: str = "gawm") -> dict[str, str]:
    """``k8s/base``: file name -> YAML text. Workloads use the image's baked pretrained weights."""
    backend = BackendConfig(kind="kubernetes", namespace=namespace)
    docs: dict[str, list[dict]] = {
        "namespace.yaml": [render_namespace(namespace)],
        "access.yaml": render_access(namespace, backend.service_account),
    }
    for name in ("resnet50", "distilbert", "whisper"):
        docs[f"{name}.yaml"] = render_server(WorkloadConfig(name=name), backend, managed_by=None)
        for obj in docs[f"{name}.yaml"]:  # the image has them; random weights are for tests and CPU-only demos
            if obj["kind"] == "Deployment":
                env = obj["spec"]["template"]["spec"]["containers"][0]["env"]
                next(e for e in env if e["name"] == "GAWM_WEIGHTS")["value"] = "pretrained"
    files = {
        name: HEADER + yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, width=120) for name, objs in docs.items()
    }
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(docs)}
    files["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write (or check) k8s/base from the renderer")
    parser.add_argument("--write", type=Path, metavar="DIR", help="write the base manifests into DIR")
    parser.add_argument("--check", type=Path, metavar="DIR", help="exit 1 when DIR differs from what would be written")
    args = parser.parse_args(argv)
    files = base_files()
    if args.check:
        stale = [
            n for n, text in files.items() if not (args.check / n).is_file() or (args.check / n).read_text() != text
        ]
        if stale:
            print(f"{args.check}: out of date: {', '.join(stale)} (run with --write)", file=sys.stderr)
            return 1
        return 0
    if not args.write:
        parser.error("give --write DIR or --check DIR")
    args.write.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.write / name).write_text(text)
    print(f"wrote {len(files)} files to {args.write}")
    return 0
