"""deploy/examples: the eviction manifests are what the API accepts and say what they promise.

Claim templates are checked by the API double's ResourceClaim validation; pods
must name the templates and device classes that exist; the Job's
podFailurePolicy must Ignore a DisruptionTarget (what the device taint eviction
controller sets) under restartPolicy Never, as batch/v1 requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_driver.testing.apiserver import ApiServerDouble

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
EXAMPLES = sorted((DEPLOY / "examples").glob("evict-*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def device_classes() -> set[str]:
    return {d["metadata"]["name"] for d in docs(DEPLOY / "deviceclasses.yaml")}


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        yield server


def test_both_examples_exist() -> None:
    assert [p.name for p in EXAMPLES] == ["evict-deployment.yaml", "evict-job.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_claims_and_pods_fit_together(path: Path, api: ApiServerDouble) -> None:
    objs = docs(path)
    templates = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ResourceClaimTemplate"}
    workloads = [o for o in objs if o["kind"] in ("Deployment", "Job")]
    assert templates and len(workloads) == 1
    for name, t in templates.items():
        assert t["apiVersion"] == "resource.k8s.io/v1"
        claim = {
            "metadata": {"name": f"from-{name}", "namespace": "default"},
            "spec": t["spec"]["spec"],
        }
        api.create("resourceclaims", claim, namespace="default")  # validated as the API would
        for request in t["spec"]["spec"]["devices"]["requests"]:
            assert request["exactly"]["deviceClassName"] in device_classes()
    pod = workloads[0]["spec"]["template"]["spec"]
    claims = {c["name"]: c for c in pod["resourceClaims"]}
    assert {c["resourceClaimTemplateName"] for c in claims.values()} <= set(templates)
    for container in pod["containers"]:
        assert {c["name"] for c in container["resources"]["claims"]} <= set(claims)


def test_job_ignores_device_taint_evictions() -> None:
    job = next(o for o in docs(DEPLOY / "examples" / "evict-job.yaml") if o["kind"] == "Job")
    assert job["apiVersion"] == "batch/v1"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    for rule in rules:
        assert rule["action"] in ("FailJob", "Ignore", "Count", "FailIndex")
        assert set(rule) <= {"action", "onExitCodes", "onPodConditions"}
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["operator"] in ("In", "NotIn")
            containers = {c["name"] for c in job["spec"]["template"]["spec"]["containers"]}
            assert rule["onExitCodes"]["containerName"] in containers
