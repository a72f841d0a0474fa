"""NVML backends against the limit: full inventory and one health sample.

    python tests/bench/bench_nvml.py                      # every shipped fake topology
    python tests/bench/bench_nvml.py --topology dgx-h100  # one fake topology
    python tests/bench/bench_nvml.py --library /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1

Three things are timed on the same library in one run: the cffi fast path,
nvidia-ml-py, and the baseline (native/bench/nvml_baseline.c, built here with
gcc): exactly the NVML calls of the job, in fastpath.c's order, from plain C
with nothing around them, i.e. what the library itself costs. Every figure is
printed as a multiple of that baseline ("x limit") and as a speed-up over
nvidia-ml-py. The baseline runs inside the bench's process, on the very
library instance the backends use, each round's jobs back to back like the
backends' ("C baseline", the divisor); "C, own process" is the same code in a
process of its own doing nothing else (caches never disturbed by Python: a
lower bound no in-process caller reaches). The jobs are timed in alternation
(one nvidia-ml-py run, then a few of each cffi variant and of the baseline,
round after round), so a shared machine's slow and fast spells weigh on
every figure alike; each figure is the median (and p90) after a warm-up.

cffi figures are shown warm (records of unchanged GPUs reused: the steady
state of a running driver) and cold (every record rebuilt from the native
structs: the first inventory, and what an inventory after a change costs at
most). Targets: warm inventory and health sample within 1.5x of
the baseline; cold inventory at least 20x faster than nvidia-ml-py, on every
topology. "crossings" counts Python-to-native transitions per job, "NVML
calls" the library calls behind them (the baseline's must equal the fast
path's, or the ratio would compare different work: the bench refuses then).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:  # an installed package (hack/gpu-check) or an editable one; else this checkout
    import dra_driver  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nvml_baseline import Baseline, InProcessBaseline, build

from dra_driver.nvml import open_backend
from dra_driver.nvml._common import GI_PROFILE_INDEX_COUNT
from dra_driver.nvml.cffi_backend import CffiBackend
from dra_driver.nvml.pynvml_backend import PynvmlBackend
from dra_driver.testing import fakenvml

TARGET_RATIO = 20.0  # cold inventory vs nvidia-ml-py
TARGET_LIMIT = 1.5  # warm jobs vs the C baseline

# A timed job: run it k times, answer each run's time in microseconds.
Job = Callable[[int], list[float]]


@dataclass
class Timing:
    median_us: float
    p90_us: float


def timed(fn: Callable[[], object]) -> Job:
    def run(k: int) -> list[float]:
        out = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    return run


def measure(jobs: dict[str, Job], reference: str, rounds: int, per_round: int) -> dict[str, Timing]:
    """Each job per_round times a round (the reference once), for rounds rounds, alternating."""
    for job in jobs.values():
        job(5)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            samples[name].extend(job(1 if name == reference else per_round))
    out = {}
    for name, xs in samples.items():
        xs.sort()
        out[name] = Timing(statistics.median(xs), xs[int(0.9 * (len(xs) - 1))])
    return out


def bench(library: str, label: str, runs: int, exe: Path, shared: Path) -> list[str]:
    """Print one library's table; answer the targets it misses."""
    fast = open_backend(library, "cffi")
    reference = open_backend(library, "nvidia-ml-py")
    assert isinstance(fast, CffiBackend) and isinstance(reference, PynvmlBackend)
    limit = InProcessBaseline(shared, library, GI_PROFILE_INDEX_COUNT)
    own = Baseline(exe, library, GI_PROFILE_INDEX_COUNT)
    misses: list[str] = []
    try:
        snap = fast.inventory()
        if snap != reference.inventory():
            raise SystemExit(f"{label}: the backends DISAGREE; figures would be meaningless")
        migs = sum(len(g.migs) for g in snap.gpus)
        print(f"\n{label}: {len(snap.gpus)} GPUs, {migs} MIG devices, driver {snap.driver_version}")
        calls = fast.last_inventory_nvml_calls
        ref_calls = reference.last_inventory_nvml_calls
        fast.health_sample()
        before = fast.nvml_calls
        fast.health_sample()
        health_calls = fast.nvml_calls - before
        before = reference.nvml_calls
        reference.health_sample()
        ref_health_calls = reference.nvml_calls - before
        for job, mine, base in (
            ("inventory", calls, limit.run("inventory", 1)[0]),
            ("health", health_calls, limit.run("health", 1)[0]),
            ("inventory", calls, own.run("inventory", 1)[0]),
            ("health", health_calls, own.run("health", 1)[0]),
        ):
            if mine != base:
                raise SystemExit(
                    f"{label}: {job}: the baseline makes {base} NVML calls, the fast path "
                    f"{mine}: update native/bench/nvml_baseline.c to fastpath.c's calls"
                )

        def cold() -> None:
            fast.clear_record_cache()
            fast.inventory()

        def cold_health() -> None:
            fast.clear_record_cache()
            fast.health_sample()

        rounds = max(10, runs // 5)
        per_round = max(1, runs // rounds)
        inv = measure(
            {
                "nvidia-ml-py": timed(reference.inventory),
                "cffi (warm)": timed(fast.inventory),
                "cffi (cold)": timed(cold),
                "C baseline": lambda k: limit.run("inventory", k)[1],
                "C, own process": lambda k: own.run("inventory", k)[1],
            },
            "nvidia-ml-py",
            rounds,
            per_round,
        )
        fast.inventory()
        hs = measure(
            {
                "nvidia-ml-py": timed(reference.health_sample),
                "cffi (warm)": timed(fast.health_sample),
                "cffi (cold)": timed(cold_health),
                "C baseline": lambda k: limit.run("health", k)[1],
                "C, own process": lambda k: own.run("health", k)[1],
            },
            "nvidia-ml-py",
            rounds,
            per_round,
        )
        crossings = {"nvidia-ml-py": None, "C baseline": 0, "C, own process": 0}
        header = (
            "job",
            "backend",
            "median us",
            "p90 us",
            "crossings",
            "NVML calls",
            "x limit",
            "vs nvidia-ml-py",
        )
        table = [header]
        for job, timings, n, ref_n in (
            ("inventory", inv, calls, ref_calls),
            ("health", hs, health_calls, ref_health_calls),
        ):
            base = timings["C baseline"].median_us
            ref = timings["nvidia-ml-py"].median_us
            for backend, t in timings.items():
                cross = crossings.get(backend, 1)
                table.append(
                    (
                        job,
                        backend,
                        f"{t.median_us:.1f}",
                        f"{t.p90_us:.1f}",
                        str(ref_n if cross is None else cross),
                        str(ref_n if backend == "nvidia-ml-py" else n),
                        f"{t.median_us / base:.2f}x",
                        f"{ref / t.median_us:.1f}x",
                    )
                )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            print(
                "  ".join(
                    c.rjust(w) if i > 1 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        checks = (
            (
                "warm inventory",
                inv["cffi (warm)"].median_us / inv["C baseline"].median_us,
                TARGET_LIMIT,
                "x the C baseline",
                False,
            ),
            (
                "warm health sample",
                hs["cffi (warm)"].median_us / hs["C baseline"].median_us,
                TARGET_LIMIT,
                "x the C baseline",
                False,
            ),
            (
                "cold inventory",
                inv["nvidia-ml-py"].median_us / inv["cffi (cold)"].median_us,
                TARGET_RATIO,
                "x faster than nvidia-ml-py",
                True,
            ),
        )
        for what, value, target, unit, at_least in checks:
            ok = value >= target if at_least else value <= target
            bound = ">=" if at_least else "<="
            print(
                f"  {what}: {value:.2f}{unit} (target {bound} {target:g}): "
                f"{'meets' if ok else 'MISSES'}"
            )
            if not ok:
                misses.append(f"{label}: {what} {value:.2f}{unit}")
        return misses
    finally:
        own.close()
        limit.close()
        fast.close()
        reference.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--library", help="a real libnvidia-ml to read (read-only) instead of the fake"
    )
    parser.add_argument(
        "--topology",
        action="append",
        help="fake topology name or path (repeatable; default: every shipped topology)",
    )
    parser.add_argument("--runs", type=int, default=300, help="cffi runs per figure")
    args = parser.parse_args(argv)
    print(
        f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
        f"(1/5/15 min), {os.cpu_count()} CPUs"
    )
    misses: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-nvml-") as tmp:
        exe, shared = build(Path(tmp))
        if args.library:
            misses = bench(args.library, args.library, args.runs, exe, shared)
        else:
            library = fakenvml.library_path()
            for topology in args.topology or fakenvml.topology_names():
                node = fakenvml.FakeNode(topology, fault_log=Path(tmp) / f"{topology}.jsonl")
                node.reset_faults()
                node.apply_env()  # read at the nvmlInit that opens the library (and the baseline's)
                misses += bench(library, f"fake {node.spec.name}", args.runs, exe, shared)
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    for miss in misses:
        print(f"MISSES: {miss}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
