"""NVML backends head to head: full inventory and one health sample, cffi vs nvidia-ml-py.

    python tests/bench/bench_nvml.py                      # fake dgx-h100 and dgx-h100-mig7
    python tests/bench/bench_nvml.py --topology dgx-h100  # one fake topology
    python tests/bench/bench_nvml.py --library /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1

Both backends load the same library in one process; each figure is the
median (and p90) of many runs after a warm-up. The jobs compared are timed
in alternation (one nvidia-ml-py run, then a few of each cffi variant, round
after round), so a shared machine's slow and fast spells weigh on every
figure alike. cffi figures are shown warm (records of unchanged GPUs reused:
the steady state of a running driver) and cold (every record rebuilt from the
native structs: the first inventory, and what an inventory after a change
costs at most). Target: the cffi inventory of 8 GPUs x 7 MIG
devices at least 20x faster than nvidia-ml-py, cold. "crossings" counts
Python-to-native transitions per job, "NVML calls" the library calls behind
them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dra_driver.nvml import open_backend
from dra_driver.nvml.cffi_backend import CffiBackend
from dra_driver.nvml.pynvml_backend import PynvmlBackend
from dra_driver.testing import fakenvml

TARGET_RATIO = 20.0


@dataclass
class Timing:
    median_us: float
    p90_us: float


def measure(
    reference: Callable[[], object],
    fast: dict[str, Callable[[], object]],
    rounds: int,
    per_round: int,
    warmup: int = 5,
) -> tuple[Timing, dict[str, Timing]]:
    """Time reference once and each fast job per_round times a round, for rounds rounds."""
    jobs = [reference, *fast.values()]
    for fn in jobs:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in jobs]
    for _ in range(rounds):
        for fn, out in zip(jobs, samples, strict=True):
            for _ in range(1 if fn is reference else per_round):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e6)
    timings = []
    for out in samples:
        out.sort()
        timings.append(Timing(statistics.median(out), out[int(0.9 * (len(out) - 1))]))
    return timings[0], dict(zip(fast, timings[1:], strict=True))


def bench(library: str, label: str, runs: int) -> bool:
    fast = open_backend(library, "cffi")
    reference = open_backend(library, "nvidia-ml-py")
    assert isinstance(fast, CffiBackend) and isinstance(reference, PynvmlBackend)
    try:
        snap = fast.inventory()
        if snap != reference.inventory():
            print(f"{label}: the backends DISAGREE; figures would be meaningless", file=sys.stderr)
            return False
        migs = sum(len(g.migs) for g in snap.gpus)
        print(f"\n{label}: {len(snap.gpus)} GPUs, {migs} MIG devices, driver {snap.driver_version}")

        def cold() -> None:
            fast.clear_record_cache()
            fast.inventory()

        rounds = max(10, runs // 5)
        per_round = max(1, runs // rounds)
        inv_ref, inv = measure(
            reference.inventory, {"warm": fast.inventory, "cold": cold}, rounds, per_round
        )
        inv_fast, inv_cold = inv["warm"], inv["cold"]
        calls = fast.last_inventory_nvml_calls
        ref_calls = reference.last_inventory_nvml_calls
        fast.inventory()
        fast.health_sample()
        before = fast.nvml_calls
        fast.health_sample()
        health_calls = fast.nvml_calls - before

        def cold_health() -> None:
            fast.clear_record_cache()
            fast.health_sample()

        hs_ref, hs = measure(
            reference.health_sample,
            {"warm": fast.health_sample, "cold": cold_health},
            rounds,
            per_round,
        )
        hs_fast, hs_cold = hs["warm"], hs["cold"]
        before = reference.nvml_calls
        reference.health_sample()
        ref_health_calls = reference.nvml_calls - before

        rows = [
            (
                "inventory",
                "cffi (warm)",
                inv_fast,
                1,
                calls,
                inv_ref.median_us / inv_fast.median_us,
            ),
            (
                "inventory",
                "cffi (cold)",
                inv_cold,
                1,
                calls,
                inv_ref.median_us / inv_cold.median_us,
            ),
            ("inventory", "nvidia-ml-py", inv_ref, ref_calls, ref_calls, 1.0),
            (
                "health",
                "cffi (warm)",
                hs_fast,
                1,
                health_calls,
                hs_ref.median_us / hs_fast.median_us,
            ),
            (
                "health",
                "cffi (cold)",
                hs_cold,
                1,
                health_calls,
                hs_ref.median_us / hs_cold.median_us,
            ),
            ("health", "nvidia-ml-py", hs_ref, ref_health_calls, ref_health_calls, 1.0),
        ]
        header = ("job", "backend", "median us", "p90 us", "crossings", "NVML calls", "speed-up")
        table = [header] + [
            (
                job,
                backend,
                f"{t.median_us:.1f}",
                f"{t.p90_us:.1f}",
                str(cross),
                str(n),
                f"{ratio:.1f}x",
            )
            for job, backend, t, cross, n, ratio in rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            print(
                "  ".join(
                    c.rjust(w) if i > 1 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        ratio = inv_ref.median_us / inv_cold.median_us
        warm_ratio = inv_ref.median_us / inv_fast.median_us
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(
            f"inventory speed-up {ratio:.1f}x cold ({warm_ratio:.1f}x warm): "
            f"cold {verdict} the {TARGET_RATIO:.0f}x target"
        )
        return True
    finally:
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
        help="fake topology name or path (repeatable; default: dgx-h100 and dgx-h100-mig7)",
    )
    parser.add_argument("--runs", type=int, default=300, help="cffi runs per figure")
    args = parser.parse_args(argv)
    if args.library:
        return 0 if bench(args.library, args.library, args.runs) else 1
    library = fakenvml.library_path()
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-nvml-") as tmp:
        for topology in args.topology or ["dgx-h100", "dgx-h100-mig7"]:
            node = fakenvml.FakeNode(topology, fault_log=Path(tmp) / "faults.jsonl")
            node.reset_faults()
            node.apply_env()  # read at the nvmlInit that opens the library
            ok = bench(library, f"fake {node.spec.name}", args.runs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
