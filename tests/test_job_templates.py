"""The Kubernetes work-pool base job templates: the structure Prefect and prefect-kubernetes expect.

Checked without a cluster: Prefect's own work-pool validation (every ``{{ placeholder }}`` of
``job_configuration`` is a declared variable), the variable defaults against their JSON schema,
and, with prefect-kubernetes installed, the job configuration its Kubernetes worker builds from
the defaults (the manifest a flow-run pod would get).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {
    kind: ROOT
    / "src"
    / "eoforge"
    / "orchestration"
    / "deployments"
    / "k8s"
    / f"{kind}-job-template.json"
    for kind in ("cpu", "gpu")
}


def _load(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(TEMPLATES[kind].read_text())
    return data


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    props = template["variables"]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def _job_configuration(kind: str) -> Any:
    """What the prefect-kubernetes worker builds from the template and its defaults."""
    kube = pytest.importorskip(
        "prefect_kubernetes.worker",
        reason="prefect-kubernetes is not installed (dev extra): cannot build the job manifest",
    )
    from prefect.utilities.templating import apply_values

    template = _load(kind)
    values = apply_values(template["job_configuration"], _defaults(template))
    return kube.KubernetesWorkerJobConfiguration(**values)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_template_is_a_valid_work_pool_template(kind: str) -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = _load(kind)
    assert set(template) == {"job_configuration", "variables"}
    assert template["variables"]["type"] == "object"
    WorkPoolCreate(name=kind, type="kubernetes", base_job_template=template)  # raises if not
    jsonschema.validate(_defaults(template), template["variables"])


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_template_keeps_the_kubernetes_worker_fields(kind: str) -> None:
    worker = pytest.importorskip(
        "prefect_kubernetes.worker", reason="prefect-kubernetes is not installed (dev extra)"
    )
    default = worker.KubernetesWorker.get_default_base_job_template()
    template = _load(kind)
    assert set(template["job_configuration"]) == set(default["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])


def test_gpu_pods_request_one_gpu_on_gpu_nodes() -> None:
    config = _job_configuration("gpu")
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "eoforge/worker-gpu:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert config.namespace == "eoforge"


def test_cpu_pods_ask_for_no_gpu() -> None:
    config = _job_configuration("cpu")
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "eoforge/worker-cpu:0.1.0"
    assert "nvidia.com/gpu" not in json.dumps(pod)
    assert container["resources"]["requests"]["memory"] == "8Gi"


def test_images_in_templates_are_the_documented_tags() -> None:
    readme = (ROOT / "docker" / "README.md").read_text()
    for kind in ("cpu", "gpu"):
        image = _load(kind)["variables"]["properties"]["image"]["default"]
        assert f"-f docker/Dockerfile.{kind} -t {image} ." in readme
