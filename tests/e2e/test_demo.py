"""`dra-driver demo` as a person runs it: one process that starts the rest.

The demo starts the API server double, the real plugin process and plays the
kubelet; these tests read its terminal output for what each step must show and
check that it leaves nothing behind (temp dir, plugin process).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from dra_driver.settings import hermetic_environ

from .conftest import REPO_ROOT, fake_nvml_library

# `python -m dra_driver inventory --fake-nvml small`
SMALL_DEVICES = (
    "gpu-0-mig-2g20gb-14-0",
    "gpu-0-mig-1g10gb-19-2",
    "gpu-0-mig-1g10gb-19-3",
    "gpu-0-mig-3g40gb-9-4",
    "gpu-1",
)
MIG = "gpu-0-mig-2g20gb-14-0"
UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    fake_nvml_library()  # skips when the fake library is not built
    full_env = hermetic_environ()
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dra_driver", "demo", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def workdir_of(out: str) -> Path:
    m = re.search(r"^work directory: (\S+)", out, re.MULTILINE)
    assert m, out
    return Path(m.group(1))


def section(out: str, number: int) -> str:
    """The lines of step `number`, up to the next heading."""
    m = re.search(rf"^{number}\. .*?(?=^\d+\. |^demo finished|^FAILED|\Z)", out, re.M | re.S)
    assert m, f"no step {number} in:\n{out}"
    return m.group(0)


def test_demo_runs_a_whole_node_and_cleans_up() -> None:
    r = run_demo()
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "Traceback" not in out + r.stderr
    assert "fake NVML (topology small)" in out

    services = re.search(r"^\s+services\s+(.+)$", section(out, 4), re.M)
    assert services and "v1.DRAPlugin" in services.group(1).split(", "), out
    assert re.search(r"^\s+kubelet uses\s+v1\.DRAPlugin$", out, re.M), out

    table = section(out, 5)
    published = [line.split()[0] for line in table.splitlines()[2:] if line.startswith("   gpu-")]
    assert published == list(SMALL_DEVICES), table
    assert re.search(r"pool demo-node: generation \d+, 1 slice\(s\), 5 devices", table), table

    prepared = section(out, 6)
    uid = re.search(rf"claim default/demo-claim uid ({UID})", prepared)
    assert uid, prepared
    for device in (MIG, "gpu-1"):
        assert f"k8s.gpu.nvidia.com/claim={uid.group(1)}-{device}" in prepared, prepared
    assert re.search(r"device nodes\s+/dev/nvidia0, /dev/nvidia-caps/nvidia-cap\d+", prepared)

    assert re.search(r"^\s+gpu-1\s+HEALTHY$", section(out, 7), re.M), out
    fault = section(out, 8)
    assert "XID 48 on GPU 0 GI" in fault and f"behind {MIG}" in fault, fault
    # Exactly the MIG device behind the XID changes on the stream ...
    changed = re.findall(r"^\s+(gpu-\S+)\s+HEALTHY\s+UNHEALTHY\s+(.*)$", fault, re.M)
    assert changed == [
        (MIG, "xid-48 (unhealthy): XID 48 (double-bit ECC error) [needs a GPU reset]")
    ], fault
    assert "every other device (GPU 0's other MIG devices too) stays Healthy" in fault
    # ... its slice entry gets the taint, and both clear after the recovery.
    assert (
        f"{MIG} tainted gpu.nvidia.com/xid=48:NoSchedule, "
        "gpu.nvidia.com/recovery=gpu-reset:NoSchedule" in fault
    ), fault
    assert re.search(rf"^\s+{MIG} HEALTHY again", fault, re.M), fault
    assert "ResourceSlice: taint removed" in fault, fault
    # The short hold is the demo's; the real default is said next to it.
    assert "(--health-hold 2: a demo setting; the driver's default is 600s)" in fault, fault

    unprepared = section(out, 9)
    assert f"claim {uid.group(1)} unprepared; CDI spec" in unprepared, unprepared
    assert "removed" in unprepared
    stopped = section(out, 10)
    assert "exited with code 0" in stopped and "sockets removed" in stopped, stopped
    assert "demo finished" in out
    assert "python -m dra_driver.testing.simhost $DIR/host --topology small" in out  # by hand
    assert "dra-driver run $(cat $DIR/host.flags)" in out
    assert not workdir_of(out).exists()


def test_demo_keep_leaves_the_workdir_with_the_plugin_log() -> None:
    r = run_demo("--keep")
    workdir = workdir_of(r.stdout)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"kept: {workdir}" in r.stdout
        log = (workdir / "plugin.log").read_text()
        assert "ready in" in log and "stopped" in log, log
        assert (workdir / "kubeconfig").is_file()
        assert list((workdir / "cdi").glob("*.json")) == []  # unprepared
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_failed_step_exits_1_with_the_plugin_log_and_stops_everything() -> None:
    # The plugin's own test hook kills it after writing the CDI spec.
    r = run_demo(env={"DRA_DRIVER_TEST_CRASH_AT": "after-cdi"})
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "Traceback" not in out + r.stderr
    assert re.search(r"^FAILED at step 6\. ", out, re.M), out
    assert "the plugin process has exited with code 137" in out, out
    assert "TEST HOOK: exiting at after-cdi" in out  # the log tail
    assert "demo finished" not in out
    assert not workdir_of(out).exists()


def test_a_non_empty_workdir_is_refused_and_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    r = run_demo("--workdir", str(tmp_path))
    assert r.returncode == 2
    assert "is not empty" in r.stderr
    assert precious.read_text() == "keep me"


def test_an_unknown_topology_is_a_usage_error() -> None:
    r = run_demo("--topology", "no-such-topology")
    assert r.returncode == 2
    assert "unknown topology" in r.stderr and "small" in r.stderr
