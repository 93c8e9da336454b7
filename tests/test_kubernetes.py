"""deploy/kubernetes/ (docs/scaling.md): every manifest validates against the Kubernetes API schemas, the
kustomization names them all, the stop sequence adds up, and the autoscaler reads metrics that a real
server exports.

kubernetes-validate ships the core API's schemas (it works offline), strict: an unknown or misspelt field
fails. KEDA's ScaledObject is a custom resource, whose schema is not among them: it is checked here by
the HorizontalPodAutoscaler that KEDA makes from it (validated against the core schema like the rest)
and by the fields KEDA's documentation requires of a Prometheus trigger. That does not prove a KEDA
installation accepts it; only a cluster with KEDA can."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are written for, and the newest whose schemas the package ships.
VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {"ScaledObject"}  # CRDs: not in the core schemas (see the module docstring)


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _objects() -> list[tuple[str, dict]]:
    return [
        (name, doc)
        for name in _kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]


def _one(kind: str) -> dict:
    found = [doc for _, doc in _objects() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_the_kustomization_lists_every_manifest_and_nothing_else() -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(_kustomization()["resources"]) == sorted(on_disk)
    images = {image["name"] for image in _kustomization()["images"]}
    containers = {c["image"] for c in _one("Deployment")["spec"]["template"]["spec"]["containers"]}
    assert containers <= images  # the image the Deployment names is the one the kustomization sets


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,doc", _objects(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict, version: str) -> None:
    if doc["kind"] in CUSTOM_KINDS:
        pytest.skip(f"{doc['kind']} is a custom resource: checked by the KEDA tests below")
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validation_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(_one("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/ready"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_the_gpu_deployment_probes_and_stop_sequence() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = _env(container)
    assert env["VOXPORT_REDIS_URL"].startswith("redis://")
    # The kubelet's deadline covers the preStop drain, the server's own drain and its grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + float(env["VOXPORT_DRAIN_S"]) + float(env["VOXPORT_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > needed
    # The keys come from the Secret, whose entries are settings the server reads.
    secret = _one("Secret")
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    from voxport.config import Settings

    fields = {f"VOXPORT_{name.upper()}" for name in Settings.model_fields}
    assert set(secret["stringData"]) <= fields
    assert {"VOXPORT_API_KEYS", "VOXPORT_ADMIN_API_KEY"} <= set(secret["stringData"])


def test_redis_keeps_an_append_only_file_on_a_persistent_volume() -> None:
    redis = _one("StatefulSet")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    claim = redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[claim] == args[
        args.index("--dir") + 1
    ]
    service = next(
        d for _, d in _objects() if d["kind"] == "Service" and d["metadata"]["name"] == "voxport-redis"
    )
    host = _env(_one("Deployment")["spec"]["template"]["spec"]["containers"][0])["VOXPORT_REDIS_URL"]
    assert host.startswith(f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/")


def _keda_hpa(scaled: dict) -> dict:
    """The HorizontalPodAutoscaler KEDA makes for a ScaledObject: one external metric per trigger, each
    aimed at its threshold per replica (metricType AverageValue, KEDA's default)."""
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}"},
        "spec": {
            "scaleTargetRef": {"apiVersion": target.get("apiVersion", "apps/v1"),
                               "kind": target.get("kind", "Deployment"), "name": target["name"]},
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "metrics": [
                {"type": "External", "external": {
                    "metric": {"name": f"s{i}-prometheus"},
                    "target": {"type": "AverageValue", "averageValue": trigger["metadata"]["threshold"]},
                }}
                for i, trigger in enumerate(spec["triggers"])
            ],
        },
    }  # fmt: skip


def test_the_scaled_object_makes_a_valid_hpa_for_the_deployment() -> None:
    scaled = _one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    for version in VERSIONS:
        kubernetes_validate.validate(_keda_hpa(scaled), version, strict=True)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"  # scaled on queue depth, not CPU or memory
        metadata = trigger["metadata"]
        assert {"serverAddress", "query", "threshold"} <= set(metadata)
        assert all(isinstance(value, str) for value in metadata.values())  # KEDA: a map of strings
        float(metadata["threshold"])


@pytest.fixture(scope="module")
def sim_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    data = tmp_path_factory.mktemp("k8s-sim")
    server = ServerProcess(["--engine", "sim", "--data-dir", str(data), "--log-level", "warning"])
    try:
        server.wait_ready()
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        yield {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    finally:
        server.stop()


def test_the_autoscaler_queries_metrics_the_server_exports(sim_metrics: set[str]) -> None:
    queries = [t["metadata"]["query"] for t in _one("ScaledObject")["spec"]["triggers"]]
    named = {
        word.split("{")[0]
        for query in queries
        for word in query.replace("(", " ").split()
        if "voxport_" in word
    }
    assert named and named <= sim_metrics, named - sim_metrics
    assert "voxport_queue_depth" in named
