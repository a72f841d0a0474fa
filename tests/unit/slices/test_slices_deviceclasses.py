"""deploy/deviceclasses.yaml: NVIDIA's exact classes, and every published device in one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from dra_driver.testing import ApiServerDouble

REPO = Path(__file__).resolve().parents[3]
CLASSES = REPO / "deploy" / "deviceclasses.yaml"
NVIDIA_CEL = {
    "gpu.nvidia.com": "device.driver == 'gpu.nvidia.com' && "
    "device.attributes['gpu.nvidia.com'].type == 'gpu'",
    "mig.nvidia.com": "device.driver == 'gpu.nvidia.com' && "
    "device.attributes['gpu.nvidia.com'].type == 'mig'",
}
# The one CEL shape the classes use: driver equality and one string attribute equality.
_SHAPE = re.compile(
    r"^device\.driver == '([^']+)' && device\.attributes\['([^']+)'\]\.(\w+) == '([^']+)'$"
)


def classes() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(CLASSES.read_text()) if d]


def selects(expression: str, driver: str, device: dict[str, Any]) -> bool:
    """Evaluate the classes' CEL shape against a published device (unqualified names
    belong to the driver's own domain, as the API defines)."""
    m = _SHAPE.match(expression)
    assert m, f"unexpected CEL shape: {expression}"
    want_driver, domain, attr, value = m.groups()
    attrs = device.get("attributes", {})
    key = attr if domain == driver else f"{domain}/{attr}"
    return driver == want_driver and attrs.get(key, {}).get("string") == value


def test_classes_are_nvidias() -> None:
    docs = classes()
    assert {
        d["metadata"]["name"]: d["spec"]["selectors"][0]["cel"]["expression"] for d in docs
    } == (NVIDIA_CEL)
    api = client.ApiClient()
    for doc in docs:
        model = api.deserialize(json.dumps(doc), "V1DeviceClass", "application/json")
        assert api.sanitize_for_serialization(model) == doc


def test_the_api_server_accepts_them() -> None:
    with ApiServerDouble() as server:
        for doc in classes():
            server.create("deviceclasses", doc)
        assert {o["metadata"]["name"] for o in server.objects("deviceclasses")} == set(NVIDIA_CEL)


def test_every_golden_device_is_in_exactly_one_class() -> None:
    exprs = [d["spec"]["selectors"][0]["cel"]["expression"] for d in classes()]
    goldens = sorted((REPO / "tests" / "golden").glob("slices-*.json"))
    assert len(goldens) >= 5
    for path in goldens:
        for s in json.loads(path.read_text()):
            for device in s["spec"].get("devices", []):
                hits = [e for e in exprs if selects(e, s["spec"]["driver"], device)]
                assert len(hits) == 1, f"{path.name}: {device['name']} is in {len(hits)} classes"
