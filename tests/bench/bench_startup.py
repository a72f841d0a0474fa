"""Startup time and resident memory of `dra-driver run` on the fake NVML.

Startup = from exec to the registration socket being present (the last start
step: NVML read, inventory, preparer checkpoint, DRA socket serving). RSS is
VmRSS of the process once started and settled. With --apiserver, the process
talks to the API server double and the time to its first ResourceSlice is
measured too. Targets: under 1.5 s, under 80 MiB. Usage:

    PYTHONPATH=. .venv/bin/python tests/bench/bench_startup.py [--runs 7] [--apiserver]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from dra_driver.testing import PluginProcess, register  # noqa: E402

TARGET_START_S = 1.5
TARGET_RSS_MIB = 80.0


@contextmanager
def api_server() -> Iterator[tuple[Path, str]]:
    """The API server double as a process: (kubeconfig path, base URL)."""
    tmp = Path(tempfile.mkdtemp(prefix="dra-bench-api-", dir="/tmp"))
    kubeconfig = tmp / "kubeconfig"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dra_driver.testing.apiserver", f"--kubeconfig-out={kubeconfig}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline():  # it prints the kubeconfig path once serving
            raise RuntimeError("the API server double exited")
        url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        yield kubeconfig, url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def slice_count(url: str, node: str) -> int:
    query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node}"})
    with urllib.request.urlopen(f"{url}/apis/resource.k8s.io/v1/resourceslices?{query}") as r:
        return len(json.load(r)["items"])


def one_run(
    topology: str, backend: str, settle: float, api: tuple[Path, str] | None, node: str
) -> tuple[float, float, float, float | None]:
    """Seconds to registration socket, to registered, to first slice; RSS MiB after settling."""
    root = Path(tempfile.mkdtemp(prefix="dra-bench-", dir="/tmp"))
    plugin = PluginProcess.start(
        root,
        [f"--kubeconfig={api[0]}"] if api else [],
        node_name=node,
        topology=topology,
        nvml_backend=backend,
    )
    try:
        socket_s = plugin.wait_ready(timeout=30, poll=0.002)
        asyncio.run(register(plugin.registration_socket))
        registered_s = time.monotonic() - plugin.started
        sliced_s = None
        if api is not None:
            while slice_count(api[1], node) == 0:
                if time.monotonic() - plugin.started > 30:
                    raise TimeoutError("no ResourceSlice within 30 s")
                time.sleep(0.005)
            sliced_s = time.monotonic() - plugin.started
        time.sleep(settle)
        rss_mib = plugin.rss_kib() / 1024
        return socket_s, registered_s, rss_mib, sliced_s
    finally:
        plugin.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--topology", default="small")
    parser.add_argument("--backend", default="auto", choices=["auto", "cffi", "nvidia-ml-py"])
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    parser.add_argument(
        "--apiserver", action="store_true", help="publish to the API server double and time it"
    )
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        api = stack.enter_context(api_server()) if args.apiserver else None
        runs = [
            one_run(args.topology, args.backend, args.settle, api, f"bench-{i}")
            for i in range(args.runs)
        ]
    sock = [r[0] for r in runs]
    reg = [r[1] for r in runs]
    rss = [r[2] for r in runs]
    print(
        f"dra-driver run startup, topology={args.topology}, backend={args.backend}, "
        f"api server={'double' if args.apiserver else 'none'}, n={args.runs}"
    )
    print(
        f"  exec -> registration socket: median {statistics.median(sock):.3f} s "
        f"(min {min(sock):.3f}, max {max(sock):.3f}; target < {TARGET_START_S} s)"
    )
    print(
        f"  exec -> registered (GetInfo + Notify): median {statistics.median(reg):.3f} s "
        f"(min {min(reg):.3f}, max {max(reg):.3f})"
    )
    sliced = [r[3] for r in runs if r[3] is not None]
    if sliced:
        print(
            f"  exec -> first ResourceSlice stored: median {statistics.median(sliced):.3f} s "
            f"(min {min(sliced):.3f}, max {max(sliced):.3f}; target < {TARGET_START_S} s)"
        )
    print(
        f"  VmRSS after start: median {statistics.median(rss):.1f} MiB "
        f"(max {max(rss):.1f}; target < {TARGET_RSS_MIB:.0f} MiB)"
    )
    ok = statistics.median(sock) < TARGET_START_S and max(rss) < TARGET_RSS_MIB
    print(f"  targets met: {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
