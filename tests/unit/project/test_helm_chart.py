"""The Helm chart: lint, render, and check the rendered objects against the code.

- The ClusterRole grants exactly the API calls found in dra_driver/ (read from
  the source with ast, so a new call without its RBAC rule fails here), with no
  wildcard and nothing on Secrets or Pods.
- Every environment variable the DaemonSet sets is a flag's twin, and the
  settings the plugin derives from them put its sockets and state inside the
  hostPath mounts, at the host's own paths.
- The probes are `dra-driver probe` commands the CLI accepts.
- The admission policy, DeviceClasses, metrics switch and examples.
Needs helm: $HELM, a helm built by hack/helm, or one on PATH; skipped otherwise.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_driver import settings as settings_mod
from dra_driver.cli import build_parser
from dra_driver.commands.common import load_settings
from dra_driver.prepare.config import decode_parameters

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "dra-driver-gpu"
EXAMPLES = REPO / "deploy" / "examples"
NAMESPACE = "dra-system"
RELEASE = "gpu"
# Set by the chart without being a flag: the container's own environment.
NON_FLAG_ENV = {"NVIDIA_VISIBLE_DEVICES", "PYTHONUNBUFFERED"}


@cache
def helm() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    built = subprocess.run(
        [str(REPO / "hack" / "helm"), "--path"],
        env={**os.environ, "HELM_NO_BUILD": "1"},
        capture_output=True,
        text=True,
    )
    if built.returncode == 0:
        return built.stdout.strip()
    found = shutil.which("helm")
    if found:
        return found
    pytest.skip("helm is not available: run hack/helm once to build it (a few minutes)")


def run_helm(*args: str) -> str:
    res = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def render(*sets: str, kube: str = "1.37.0") -> list[dict[str, Any]]:
    flags = [f for s in sets for f in ("--set", s)]
    out = run_helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", kube, *flags)
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


# --- the API calls in the code ------------------------------------------------------------

HTTP_VERB = {"POST": "create", "PUT": "update", "PATCH": "patch"}
# kubernetes.client.CustomObjectsApi methods -> (verb, subresource)
CUSTOM_OBJECT_CALLS = {
    "get_namespaced_custom_object": ("get", ""),
    "list_namespaced_custom_object": ("list", ""),
    "list_cluster_custom_object": ("list", ""),
    "create_namespaced_custom_object": ("create", ""),
    "patch_namespaced_custom_object": ("patch", ""),
    "replace_namespaced_custom_object": ("update", ""),
    "delete_namespaced_custom_object": ("delete", ""),
    "get_namespaced_custom_object_status": ("get", "status"),
    "patch_namespaced_custom_object_status": ("patch", "status"),
    "replace_namespaced_custom_object_status": ("update", "status"),
}
PATHS = {"SLICES_PATH": ("resource.k8s.io", "resourceslices")}


def _production_modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((REPO / "dra_driver").rglob("*.py")):
        if path.relative_to(REPO / "dra_driver").parts[0] == "testing":
            continue  # the simulation kit is a client of the driver, not part of it
        yield path, ast.parse(path.read_text(), str(path))


def _path_resource(node: ast.expr) -> tuple[str, str, bool]:
    """(group, resource, is_item) of a REST path expression in SliceApi."""
    text = ast.unparse(node)
    for name, (group, resource) in PATHS.items():
        if name in text:
            return group, resource, isinstance(node, ast.JoinedStr)
    if "/api/v1/nodes" in text:
        return "", "nodes", isinstance(node, ast.JoinedStr)
    raise AssertionError(f"a REST call to an unknown path: {text}")


def code_api_calls() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every API server call the driver makes."""
    calls: set[tuple[str, str, str]] = set()
    for path, tree in _production_modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            watches = any(isinstance(n, ast.Constant) and n.value == "watch" for n in ast.walk(fn))
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                name = node.func.attr
                args = node.args
                if name == "call_api":
                    assert path.name == "api.py", f"{path}: raw call_api outside SliceApi"
                if name == "_call" and args and isinstance(args[0], ast.Constant):
                    method = args[0].value
                    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                        continue
                    group, resource, item = _path_resource(args[1])
                    if method == "GET":
                        verb = "get" if item else ("watch" if watches else "list")
                    elif method == "DELETE":
                        verb = "delete" if item else "deletecollection"
                    else:
                        verb = HTTP_VERB[method]
                    calls.add((group, resource, verb))
                elif name.endswith(("_custom_object", "_custom_object_status")):
                    assert name in CUSTOM_OBJECT_CALLS, f"{path}: unknown client call {name}"
                    verb, sub = CUSTOM_OBJECT_CALLS[name]
                    plural = next(a.value for a in args if isinstance(a, ast.Constant) and a.value)
                    assert ast.unparse(args[0]) == "RESOURCE_GROUP", ast.unparse(node)
                    calls.add(("resource.k8s.io", f"{plural}/{sub}" if sub else plural, verb))
                elif name in ("CoreV1Api", "ResourceV1Api", "DynamicClient"):
                    raise AssertionError(f"{path}: {name} calls are not checked by this test")
    return calls


def granted(role: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


# --- tests ---------------------------------------------------------------------------------------


def test_lint() -> None:
    out = run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


def test_the_code_calls_what_the_publisher_and_preparer_need() -> None:
    calls = code_api_calls()
    # The scan itself must see the calls we know of; otherwise it proves nothing.
    assert {
        ("resource.k8s.io", "resourceslices", "list"),
        ("resource.k8s.io", "resourceslices", "watch"),
        ("resource.k8s.io", "resourceslices", "create"),
        ("resource.k8s.io", "resourceclaims", "get"),
        ("", "nodes", "get"),
    } <= calls


def test_cluster_role_is_exactly_the_code_and_has_no_wildcards() -> None:
    docs = render()
    role = one(docs, "ClusterRole")
    rules = granted(role)
    calls = code_api_calls()
    status = ("resource.k8s.io", "resourceclaims/status", "patch")
    if status in calls:  # the 1.36 granular status authorization checks this one too
        calls.add(("resource.k8s.io", "resourceclaims/driver", "associated-node:patch"))
    assert rules == calls, (
        f"ClusterRole grants {sorted(rules - calls)} the code does not call and lacks "
        f"{sorted(calls - rules)}"
        + (" (turn rbac.claimDeviceStatus on by default)" if status in calls else "")
    )
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"secrets", "pods", "configmaps"} & set(rule["resources"]), rule
    binding = one(docs, "ClusterRoleBinding")
    sa = one(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_claim_device_status_rules_behind_their_value() -> None:
    role = one(render("rbac.claimDeviceStatus=true"), "ClusterRole")
    extra = granted(role) - granted(one(render("rbac.claimDeviceStatus=false"), "ClusterRole"))
    assert extra == {
        ("resource.k8s.io", "resourceclaims/status", "patch"),
        ("resource.k8s.io", "resourceclaims/driver", "associated-node:patch"),
    }
    driver_rule = next(r for r in role["rules"] if r["resources"] == ["resourceclaims/driver"])
    assert driver_rule["resourceNames"] == ["gpu.nvidia.com"]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    ds = one(docs, "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return dict(c)


def plugin_settings(c: Mapping[str, Any], node: str = "node-a") -> settings_mod.Settings:
    """What `dra-driver run` makes of the container's environment."""
    env = {}
    for e in c["env"]:
        if "valueFrom" in e:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, e
            env[e["name"]] = node
        else:
            env[e["name"]] = str(e["value"])
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        parser = argparse.ArgumentParser()
        settings_mod.add_arguments(parser, settings_mod.RUN)
        return load_settings(parser.parse_args([]))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_env_is_flags_and_sockets_and_state_live_in_host_mounts() -> None:
    docs = render("nvidiaDriverRoot=/run/nvidia/driver", "logLevel=DEBUG")
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container(docs)
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names)), names
    assert set(names) - NON_FLAG_ENV <= {f.env for f in settings_mod.FLAGS}, (
        set(names) - NON_FLAG_ENV - {f.env for f in settings_mod.FLAGS}
    )
    assert c["command"] == ["dra-driver", "run"]
    s = plugin_settings(c)
    assert (s.node_name, s.driver_name, s.log_level) == ("node-a", "gpu.nvidia.com", "DEBUG")
    assert s.driver_root == Path("/driver-root")
    assert s.host_driver_root_path == Path("/run/nvidia/driver")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

    def host_path_of(container_path: Path) -> Path:
        """The host path a container path resolves to through the pod's hostPath mounts."""
        best = max((m for m in mounts if container_path.is_relative_to(m)), key=len, default=None)
        assert best is not None, f"{container_path} is in no mount"
        host = Path(volumes[mounts[best]["name"]]["hostPath"]["path"])
        return host / container_path.relative_to(best)

    # The kubelet dials the registered paths on the host: they must be the same there.
    for p in (s.dra_socket, s.registration_socket, s.cdi_root, s.state_path):
        assert host_path_of(p) == p, p
    assert not mounts["/var/lib/kubelet/plugins"].get("readOnly")
    # Read-only views of the host, where the settings look for them.
    assert host_path_of(s.driver_root) == Path("/run/nvidia/driver")
    assert host_path_of(s.dev_root / "dev") == Path("/dev")
    assert host_path_of(s.sys_root) == Path("/sys")
    assert host_path_of(s.nvidia_proc_path) == Path("/proc/driver/nvidia")
    for p in (s.driver_root, s.dev_root / "dev", s.sys_root, s.nvidia_proc_path):
        assert mounts[str(p)]["readOnly"] is True
    # runc refuses bind mounts inside the container's /proc.
    assert not [m for m in mounts if m == "/proc" or m.startswith("/proc/")]


def test_pod_spec_priority_strategy_resources_and_probes() -> None:
    ds = one(render(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container([ds])
    assert pod["priorityClassName"] == "system-node-critical"
    assert c["securityContext"] == {"privileged": True}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    # Never two plugin pods on one node: they would serve the same socket paths.
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    parser = build_parser()
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[kind]["exec"]["command"]
        assert command[:2] == ["dra-driver", "probe"], command
        args = parser.parse_args(command[1:])
        assert args.func.__module__ == "dra_driver.commands.probe"
        assert args.require_registration is (kind != "livenessProbe"), kind
        assert c[kind]["timeoutSeconds"] > args.timeout  # both socket calls fit
    live = parser.parse_args(c["livenessProbe"]["exec"]["command"][1:])
    ready = parser.parse_args(c["readinessProbe"]["exec"]["command"][1:])
    # The NVML age limits exceed the health poll interval, so healthy pods never flap.
    s = plugin_settings(c)
    assert ready.max_nvml_age > 2 * s.health_poll_interval
    assert live.max_nvml_age >= ready.max_nvml_age


def test_node_selection_and_extra_values() -> None:
    docs = render(
        "kubeletPlugin.affinity=null",
        "kubeletPlugin.nodeSelector.gpu=yes",
        "kubeletPlugin.extraEnv[0].name=FAKE_NVML",
        "kubeletPlugin.extraEnv[0].value=small",
        "kubeletPlugin.extraArgs[0]=--health-resend-interval=5",
        "image.tag=t1",
        "image.pullPolicy=Never",
        "kubeletPlugin.hostNetwork=true",
    )
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["nodeSelector"] == {"gpu": "yes"} and "affinity" not in pod
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert "hostNetwork" not in one(render(), "DaemonSet")["spec"]["template"]["spec"]
    assert {"name": "FAKE_NVML", "value": "small"} in c["env"]
    assert c["args"] == ["--health-resend-interval=5"]
    assert (c["image"], c["imagePullPolicy"]) == ("dra-driver-gpu:t1", "Never")
    parser = build_parser()
    parser.parse_args([*c["command"][1:], *c["args"]])


def test_admission_policy_confines_writes_to_the_pods_node() -> None:
    docs = render()
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["resource.k8s.io"]
    assert set(rule["apiVersions"]) == {"v1", "v1beta1", "v1beta2"}
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    assert rule["resources"] == ["resourceslices"]
    (match,) = policy["spec"]["matchConditions"]
    assert match["expression"] == (
        f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:{sa}"'
    )
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert "authentication.kubernetes.io/node-name" in variables["userNode"]
    assert "oldObject.spec" in variables["nodes"] and "object.spec" in variables["nodes"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    assert not by_kind(render("admissionPolicy.enabled=false"), "ValidatingAdmissionPolicy")


def test_device_classes_match_the_plain_manifest_and_the_server_version() -> None:
    plain = {
        d["metadata"]["name"]: d["spec"]
        for d in yaml.safe_load_all((REPO / "deploy" / "deviceclasses.yaml").read_text())
        if d
    }
    rendered = {d["metadata"]["name"]: d["spec"] for d in by_kind(render(), "DeviceClass")}
    assert rendered == plain
    assert rendered["gpu.nvidia.com"]["extendedResourceName"] == "nvidia.com/gpu"
    # Before 1.36 the field is off by default (KEP-5004 alpha): not rendered.
    older = {
        d["metadata"]["name"]: d["spec"] for d in by_kind(render(kube="1.35.0"), "DeviceClass")
    }
    assert "extendedResourceName" not in older["gpu.nvidia.com"]
    off = by_kind(render("deviceClasses.gpu.extendedResourceName="), "DeviceClass")
    assert all("extendedResourceName" not in d["spec"] for d in off)
    renamed = by_kind(render("driverName=gpu.example.com"), "DeviceClass")
    assert all("gpu.example.com" in d["spec"]["selectors"][0]["cel"]["expression"] for d in renamed)


def test_metrics_switch() -> None:
    assert not by_kind(render(), "Service")
    docs = render("metrics.enabled=true", "metrics.serviceMonitor.enabled=true")
    c = container(docs)
    assert {"name": "METRICS_ADDRESS", "value": ":8080"} in c["env"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    svc = one(docs, "Service")
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert plugin_settings(c).metrics_address == ":8080"


def test_dynamic_mig_switch() -> None:
    assert not plugin_settings(container(render())).dynamic_mig
    c = container(render("dynamicMig=true"))
    assert {"name": "DYNAMIC_MIG", "value": "true"} in c["env"]
    s = plugin_settings(c)
    assert s.dynamic_mig and s.publisher_config().partitionable_devices
    pod = one(render("dynamicMig=true", "fakeNvml.topology=a100-dynamic"), "DaemonSet")
    (init,) = pod["spec"]["template"]["spec"]["initContainers"]
    args = init["command"][2].split("python3 -m dra_driver.testing.simhost ", 1)[1]
    from dra_driver.testing import simhost

    parsed = simhost._parser().parse_args(args.replace('"$0"', init["command"][3]).split())
    assert parsed.spare_mig_caps and parsed.topology == "a100-dynamic"


def test_bad_values_fail_the_render_with_a_reason() -> None:
    for bad, reason in (
        ("nvidiaDriverRoot=run/nvidia", "must be an absolute host path"),
        ("driverName=gpu", "DNS subdomain"),
        ("stateDir=/var/lib/other", "must lie under"),
    ):
        res = subprocess.run(
            [helm(), "template", RELEASE, str(CHART), "--set", bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0 and reason in res.stderr, (bad, res.stderr)


def test_examples_use_our_classes_and_valid_configs() -> None:
    classes = {"gpu.nvidia.com", "mig.nvidia.com"}
    seen = set()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            seen.add(doc["kind"])
            spec = doc.get("spec", {})
            spec = spec.get("spec", spec) if doc["kind"] == "ResourceClaimTemplate" else spec
            for request in spec.get("devices", {}).get("requests", []) if "devices" in spec else []:
                assert request["exactly"]["deviceClassName"] in classes, path
            for config in spec.get("devices", {}).get("config", []) if "devices" in spec else []:
                params = config["opaque"]["parameters"]
                decode_parameters(params, f"{path.name}")  # raises on a bad field
    assert {"ResourceClaim", "ResourceClaimTemplate", "Pod", "Namespace"} <= seen


def test_fake_nvml_mode_builds_a_simulated_host_and_points_the_plugin_at_it() -> None:
    from dra_driver.testing import simhost

    docs = render("fakeNvml.topology=small", "fakeNvml.hostDir=/var/lib/sim")
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    script, topology = init["command"][2], init["command"][3]
    assert init["command"][:2] == ["sh", "-c"] and topology == "small"
    module_args = script.split("python3 -m dra_driver.testing.simhost ", 1)[1]
    argv = module_args.replace('"$0"', topology).split()
    parsed = simhost._parser().parse_args(argv)
    assert (str(parsed.directory), parsed.topology, parsed.mknod) == ("/sim/host", "small", True)
    c = container(docs)
    assert {"name": "FAKE_NVML", "value": "small"} in c["env"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert volumes["simulated-host"] == "/var/lib/sim"
    host = "/var/lib/sim/host"  # what the init container's /sim/host is on the node
    assert volumes["driver-root"] == f"{host}/driver-root"
    assert volumes["dev"] == f"{host}/dev-root/dev"
    assert volumes["sys"] == f"{host}/sys"
    assert volumes["proc-driver-nvidia"] == f"{host}/proc/driver/nvidia"
    s = plugin_settings(c)
    assert s.host_driver_root_path == Path(f"{host}/driver-root")  # what specs name
    assert s.fake_nvml == "small" and s.nvml_library  # the bundled fake library
