"""Build and drive native/bench/nvml_baseline.c: the NVML calls of a job from plain C.

Built here with gcc (not by pip: it is a benchmark's yardstick, not part of the
driver) against the nvml.h the project builds with (native/nvml_headers.py:
NVML_INCLUDE_DIR or the nvidia-nvml-dev wheel), and run as a child process
that times each job itself and answers over a pipe (Baseline), and as a
shared object loaded into the bench's own process (InProcessBaseline), so a
bench can time it in alternation with the Python backends, on the same
library instance.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "native" / "bench" / "nvml_baseline.c"


def include_dir() -> str:
    sys.path.insert(0, str(ROOT / "native"))
    try:
        from nvml_headers import include_dir as find
    finally:
        sys.path.pop(0)
    return str(find())


def build(out_dir: Path) -> tuple[Path, Path]:
    """Compile the baseline program and shared object into out_dir.

    A clear error when gcc or nvml.h is missing.
    """
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no C compiler (gcc) for the NVML baseline")
    exe, shared = out_dir / "nvml_baseline", out_dir / "nvml_baseline.so"
    common = [gcc, "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{include_dir()}"]
    for cmd in (
        [*common, str(SOURCE), "-o", str(exe), "-ldl"],
        [*common, "-DBASELINE_LIBRARY", "-shared", "-fPIC", str(SOURCE), "-o", str(shared), "-ldl"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building the NVML baseline failed:\n{done.stderr}")
    return exe, shared


class InProcessBaseline:
    """The baseline inside this process: dlopen of the same path finds the loaded library."""

    JOBS = {"inventory": 0, "health": 1}

    def __init__(self, shared: Path, library: str, profile_index_count: int) -> None:
        self._lib = ctypes.CDLL(str(shared))
        self._lib.bl_open.argtypes = [
            ctypes.c_char_p,
            ctypes.c_uint,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self._lib.bl_run.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.POINTER(ctypes.c_longlong)]
        self._lib.bl_run.restype = ctypes.c_ulonglong
        err = ctypes.create_string_buffer(512)
        if self._lib.bl_open(library.encode(), profile_index_count, err, len(err)) != 0:
            raise RuntimeError(f"NVML baseline: {err.value.decode()}")
        self._ns = (ctypes.c_longlong * 100000)()

    def run(self, job: str, n: int) -> tuple[int, list[float]]:
        calls = self._lib.bl_run(self.JOBS[job], n, self._ns)
        return int(calls), [self._ns[k] / 1000 for k in range(n)]

    def close(self) -> None:
        """nvmlShutdown (NVML counts inits: the process's other users keep theirs)."""
        self._lib.bl_close()


class Baseline:
    """One running baseline process on one library (environment as the caller's)."""

    def __init__(self, exe: Path, library: str, profile_index_count: int) -> None:
        self._proc = subprocess.Popen(
            [str(exe), library, str(profile_index_count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, job: str, n: int) -> tuple[int, list[float]]:
        """n jobs ("inventory" or "health"): NVML calls per job, and each job's time in us."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{job} {n}\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"NVML baseline exited: {err.strip()}")
        calls, *ns = line.split()
        return int(calls), [int(x) / 1000 for x in ns]

    def close(self) -> None:
        if self._proc.stdin:
            with contextlib.suppress(BrokenPipeError):  # it had exited: run() said why
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()
