"""deploy/k8s/ is valid Kubernetes and agrees with the code it deploys.

Built-in kinds are validated against the Kubernetes OpenAPI schemas in strict mode (unknown fields
fail) by kubernetes-validate; KEDA objects are checked field by field, their Redis list names against
kombu's own naming. No cluster is needed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import REPO_ROOT, Settings

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest we support, newest the validator knows
PINNED_TAG = re.compile(r"^[\w./-]+:(\d[\w.-]*)$")


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def objects(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for name in kustomization["resources"] for doc in _load(K8S / name)]


def _of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _flag(args: list[str], name: str) -> str | None:
    for i, part in enumerate(args):
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
        if part == name and i + 1 < len(args):
            return args[i + 1]
    return None


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_match_the_kubernetes_schema(objects: list[dict[str, Any]], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_the_schema_check_catches_a_misspelt_field(objects: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = copy.deepcopy(_of_kind(objects, "Deployment")["gateway"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_deployment_has_probes_requests_and_runs_unprivileged(objects: list[dict[str, Any]]) -> None:
    deployments = _of_kind(objects, "Deployment")
    assert set(deployments) == {"triton", "gateway", "worker-volumes", "worker-batch"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in _containers(deployment):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, f"{name}: no {probe}"
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), f"{name}: needs cpu and memory requests"
            assert "memory" in container["resources"]["limits"], f"{name}: needs a memory limit"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_images_are_pinned_and_match_compose(objects: list[dict[str, Any]], kustomization: dict[str, Any]) -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    compose_images = {s["image"] for s in compose["services"].values()}
    for name, deployment in _of_kind(objects, "Deployment").items():
        for container in _containers(deployment):
            assert PINNED_TAG.match(container["image"]), f"{name}: {container['image']} is not pinned"
            assert container["image"] in compose_images, f"{name}: {container['image']} differs from compose.yaml"
    for image in kustomization["images"]:
        assert f"{image['name']}:{image['newTag']}" in compose_images


def test_triton_requests_a_gpu_and_is_ready_on_the_kserve_endpoint(objects: list[dict[str, Any]]) -> None:
    triton = _containers(_of_kind(objects, "Deployment")["triton"])[0]
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    defaults = Settings()
    assert ports == {"http": defaults.triton_http_port, "grpc": defaults.triton_grpc_port,
                     "metrics": defaults.triton_metrics_port}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    args = triton["args"]
    assert _flag(args, "--model-config-name") == "gpu"
    assert _flag(args, "--model-control-mode") == "explicit" and _flag(args, "--strict-readiness") == "true"
    repository = _flag(args, "--model-repository")
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts[repository].get("readOnly") is True


def test_services_select_pods_and_expose_their_ports(objects: list[dict[str, Any]]) -> None:
    deployments = _of_kind(objects, "Deployment")
    for name, service in _of_kind(objects, "Service").items():
        if service["spec"].get("type") == "ExternalName":
            continue
        selector = service["spec"]["selector"]
        targets = [d for d in deployments.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {name} must select exactly one Deployment"
        named = {p["name"] for c in _containers(targets[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, f"Service {name}: no container port {port['targetPort']}"
    gateway = _of_kind(objects, "Service")["gateway"]
    assert gateway["spec"]["ports"][0]["port"] == Settings().gateway_port
    args = _containers(deployments["gateway"])[0]["args"]
    assert _flag(args, "--port") == str(Settings().gateway_port)


def test_redis_and_postgres_are_external(objects: list[dict[str, Any]]) -> None:
    services = _of_kind(objects, "Service")
    for name in ("redis", "postgres"):
        assert services[name]["spec"]["type"] == "ExternalName"
    assert not {"redis", "postgres"} & set(_of_kind(objects, "Deployment")), "run by the hospital, not here"


def test_config_names_settings_and_matches_the_cluster(objects: list[dict[str, Any]]) -> None:

    data = _of_kind(objects, "ConfigMap")["medstack-config"]["data"]
    known = set(Settings.model_fields)
    for variable in data:
        assert variable.removeprefix("MEDSTACK_").removesuffix("_FILE").lower() in known, variable
    assert data["MEDSTACK_TRITON_HOST"] in _of_kind(objects, "Service")
    defaults = Settings()
    assert data["MEDSTACK_TRITON_GRPC_PORT"] == str(defaults.triton_grpc_port)
    assert data["MEDSTACK_TRITON_HTTP_PORT"] == str(defaults.triton_http_port)
    assert not any(re.search(r"://[^/\s]*:[^@/\s]+@", v) for v in data.values()), "no passwords in a ConfigMap"

    claims = set(_of_kind(objects, "PersistentVolumeClaim"))
    for name, deployment in _of_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name}: {volume['name']}"
        if name == "triton":
            continue
        container = _containers(deployment)[0]
        assert container["envFrom"] == [{"configMapRef": {"name": "medstack-config"}}], name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[data["MEDSTACK_MODEL_REPOSITORY"]].get("readOnly") is True, name
        assert not mounts[data["MEDSTACK_ARTIFACT_DIR"]].get("readOnly"), name
        secret_dirs = {str(Path(v).parent) for k, v in data.items() if k.endswith("_FILE")}
        for directory in secret_dirs:
            assert directory in mounts, f"{name}: secret files expected under {directory}"


def test_every_deployment_has_an_autoscaler(objects: list[dict[str, Any]]) -> None:
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in _of_kind(objects, "HorizontalPodAutoscaler").values()}
    scaled |= {s["spec"]["scaleTargetRef"]["name"] for s in _of_kind(objects, "ScaledObject").values()}
    assert scaled == set(_of_kind(objects, "Deployment"))


def _celery_lists(queue: str) -> list[str]:
    """The Redis lists kombu's transport uses for one queue, one per priority step."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def test_workers_scale_on_every_priority_list_of_their_queue(objects: list[dict[str, Any]]) -> None:
    from workers.celery_app import celery_app

    queues = {q.name for q in celery_app.conf.task_queues}
    deployments = _of_kind(objects, "Deployment")
    auth = set(_of_kind(objects, "TriggerAuthentication"))
    served = set()
    for name, scaled in _of_kind(objects, "ScaledObject").items():
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        queue = _flag(_containers(target)[0]["args"], "--queues")
        served.add(queue)
        triggers = scaled["spec"]["triggers"]
        assert [t["metadata"]["listName"] for t in triggers] == _celery_lists(queue), name
        assert all(t["type"] == "redis" and t["authenticationRef"]["name"] in auth for t in triggers), name
        # the queue length is the sum over its lists, one metric with one target
        formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert sorted(formula.replace(" ", "").split("+")) == sorted(t["name"] for t in triggers), name
        assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert served == queues


def test_worker_probes_ping_the_worker_itself(objects: list[dict[str, Any]]) -> None:
    for name, deployment in _of_kind(objects, "Deployment").items():
        if not name.startswith("worker-"):
            continue
        container = _containers(deployment)[0]
        host = _flag(container["args"], "--hostname")
        assert host.endswith("@$(POD_NAME)"), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = " ".join(container[probe]["exec"]["command"])
            assert f"-d {host.split('@')[0]}@$POD_NAME" in command, f"{name}: {probe}"
            # exec probes skip ENTRYPOINT; the ping needs the broker URL from the secret files
            assert command.startswith("sh -c medstack-entrypoint celery"), f"{name}: {probe}"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 120, f"{name}: give the running job time to finish on SIGTERM"


def test_network_policy_admits_the_pods_kustomize_labels(kustomization: dict[str, Any],
                                                         objects: list[dict[str, Any]]) -> None:
    label = kustomization["labels"][0]
    assert label["includeTemplates"] is True
    policy = _of_kind(objects, "NetworkPolicy")["triton-ingress"]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == label["pairs"]


def _apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The replace/remove subset of RFC 6902 that the CPU overlay uses."""
    result = copy.deepcopy(document)
    for op in operations:
        *parents, last = [int(p) if p.isdigit() else p for p in op["path"].strip("/").split("/")]
        node = result
        for part in parents:
            node = node[part]
        if op["op"] == "replace":
            assert last in node if isinstance(node, dict) else last < len(node), op["path"]
            node[last] = op["value"]
        elif op["op"] == "remove":
            del node[last]
        else:
            raise AssertionError(f"unsupported op {op['op']}")
    return result


def test_cpu_overlay_drops_the_gpu(objects: list[dict[str, Any]]) -> None:
    overlay = yaml.safe_load((K8S / "cpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    patched = {}
    for patch in overlay["patches"]:
        kind, name = patch["target"]["kind"], patch["target"]["name"]
        patched[kind] = _apply_json_patch(_of_kind(objects, kind)[name], yaml.safe_load(patch["patch"]))
    triton = _containers(patched["Deployment"])[0]
    assert "nvidia.com/gpu" not in str(patched["Deployment"])
    assert _flag(triton["args"], "--model-config-name") is None  # config.pbtxt: CPU instances
    assert _flag(triton["args"], "--model-control-mode") == "explicit"
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for obj in patched.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
