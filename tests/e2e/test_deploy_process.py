"""What the chart relies on, proven on the real `dra-driver run` process.

- File modes hold whatever the umask: sockets 0600 in 0700 directories, state
  0700, checkpoint 0600, CDI specs 0644 (here under umask 000, where sockets
  used to be 0777 and any local user could call NodeUnprepareResources).
- The default state directory is not NVIDIA's: their checkpoint.json in the
  plugin directory is left alone.
- A spec written in the container layout (driver root mounted elsewhere)
  names host paths.
- `dra-driver probe` (the pod's probes) passes against a healthy plugin and
  fails, saying why, for a stopped one, a wedged one and a stale NVML answer.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from dra_driver import settings as settings_mod
from dra_driver.inventory import Inventory
from dra_driver.prepare.checkpoint import decode
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.kubelet import DraClient, register
from dra_driver.testing.simhost import claim_object, populate_host

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

HOST_DRIVER_ROOT = "/run/nvidia/driver"
NVIDIA_CHECKPOINT = b'{"checksum":1234,"data":"{\\"v1\\":{\\"preparedClaims\\":{}}}"}'


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def test_modes_state_dir_and_host_paths_under_umask_000(
    plugin_factory: PluginFactory, inventory: Inventory, root: Path
) -> None:
    host = populate_host(root / "host", inventory, cdi_hook=True)
    plugin_dir = root / "plugins" / DRIVER_NAME
    plugin_dir.mkdir(parents=True, mode=0o755)
    (plugin_dir / "checkpoint.json").write_bytes(NVIDIA_CHECKPOINT)  # NVIDIA's, left behind
    with ApiServerDouble() as api:
        api.create_node(NODE_NAME)
        old = os.umask(0)
        try:
            plugin = plugin_factory(
                [
                    f"--kubeconfig={api.kubeconfig_path(root)}",
                    f"--dev-root={host.dev_root}",
                    f"--proc-root={host.proc_root}",
                    f"--driver-root={host.driver_root}",
                    f"--host-driver-root={HOST_DRIVER_ROOT}",
                    "--state-dir=",  # the default location
                ],
                root=root,
                timeout=60,  # a loaded CI machine: the start is not what this test measures
            )
        finally:
            os.umask(old)
        obj = claim_object("", "modes", [{"request": "gpu", "device": "gpu-1"}], pool=NODE_NAME)
        del obj["metadata"]["uid"]
        uid = api.create("resourceclaims", obj)["metadata"]["uid"]
        reg = await register(plugin.registration_socket)
        async with DraClient.for_registration(reg) as dra:
            resp = await dra.prepare([ClaimRef("default", uid, "modes")])
        assert resp.claims[uid].error == ""

    state = plugin_dir / "dra-driver-gpu"
    spec_path = plugin.cdi_root / f"k8s.{DRIVER_NAME}-claim_{uid}.json"
    assert {
        "dra.sock": mode(plugin.dra_socket),
        "reg.sock": mode(plugin.registration_socket),
        "plugin dir": mode(plugin_dir),
        "state dir": mode(state),
        "checkpoint": mode(state / "checkpoint.json"),
        "heartbeat": mode(state / "heartbeat.json"),
        "cdi root": mode(plugin.cdi_root),
        "cdi spec": mode(spec_path),
    } == {
        "dra.sock": 0o600,
        "reg.sock": 0o600,
        "plugin dir": 0o700,
        "state dir": 0o700,
        "checkpoint": 0o600,
        "heartbeat": 0o600,
        "cdi root": 0o755,
        "cdi spec": 0o644,
    }
    assert stat.S_ISSOCK(os.lstat(plugin.dra_socket).st_mode)
    # NVIDIA's checkpoint is neither read as ours nor moved aside as corrupt.
    assert (plugin_dir / "checkpoint.json").read_bytes() == NVIDIA_CHECKPOINT
    assert sorted(p.name for p in plugin_dir.iterdir()) == [
        "checkpoint.json",
        "dra-driver-gpu",
        "dra.sock",
    ]
    assert uid in decode((state / "checkpoint.json").read_bytes()).claims
    # Written with the driver root mounted at a temp path: the spec names the host's root.
    spec = json.loads(spec_path.read_bytes())
    edits = spec["containerEdits"]
    assert edits["mounts"] and all(
        m["hostPath"].startswith(HOST_DRIVER_ROOT + "/") for m in edits["mounts"]
    )
    assert {h["path"] for h in edits["hooks"]} == {f"{HOST_DRIVER_ROOT}/usr/bin/nvidia-cdi-hook"}
    assert str(root) not in spec_path.read_text()


def probe(plugin: PluginProcess, *flags: str) -> subprocess.CompletedProcess[str]:
    """`dra-driver probe` with the plugin's own settings, as the pod's exec probe runs it."""
    accepted = {f.flag for f in settings_mod.flags_for(settings_mod.PROBE)}
    settings = [a for a in plugin.args[4:] if a.split("=", 1)[0] in accepted]
    return subprocess.run(
        [sys.executable, "-m", "dra_driver", "probe", *settings, *flags],
        env=plugin.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_probe_passes_on_a_healthy_plugin_and_says_what_fails(
    plugin_factory: PluginFactory,
) -> None:
    plugin = plugin_factory(["--health-poll-interval=0.2"], timeout=60)
    ok = probe(plugin, "--max-nvml-age=30")
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok"), ok.stdout + ok.stderr

    # Readiness waits for the kubelet's confirmation of the registration.
    unregistered = probe(plugin, "--require-registration")
    assert unregistered.returncode == 1
    assert "has not confirmed the registration" in unregistered.stdout
    await register(plugin.registration_socket)
    deadline = time.monotonic() + 10
    while (registered := probe(plugin, "--require-registration")).returncode != 0:
        assert time.monotonic() < deadline, registered.stdout  # next heartbeat write: <= 2 s
        time.sleep(0.5)

    # NVML answers count: a limit below the poll interval is missed now and then; a limit
    # of a millisecond always.
    stale = probe(plugin, "--max-nvml-age=0.001")
    assert stale.returncode == 1 and "NVML last answered" in stale.stdout

    # A wedged process (its event loop cannot answer) fails both socket calls.
    os.kill(plugin.pid, signal.SIGSTOP)
    try:
        wedged = probe(plugin, "--timeout=1")
    finally:
        os.kill(plugin.pid, signal.SIGCONT)
    assert wedged.returncode == 1
    assert "GetInfo" in wedged.stdout and "NodePrepareResources" in wedged.stdout
    assert "DEADLINE_EXCEEDED" in wedged.stdout

    # Stopped: no sockets, no heartbeat.
    assert plugin.stop() == 0
    gone = probe(plugin, "--timeout=1")
    assert gone.returncode == 1
    assert "does not exist" in gone.stdout and "UNAVAILABLE" in gone.stdout
