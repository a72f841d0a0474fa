"""cffi (API mode) builder for dra_driver.nvml._fastpath.

The extension compiles against nvml.h only (from the nvidia-nvml-dev wheel or
NVML_INCLUDE_DIR): it dlopen()s libnvidia-ml at run time, so building needs no
GPU, no CUDA and no system NVML. The cdef is the marked part of
fastpath/fastpath.h, so the C structs and the Python view of them cannot drift.
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from nvml_headers import include_dir  # noqa: E402

_SRC_DIR = os.path.join(_HERE, "fastpath")
_BEGIN = "/* CDEF BEGIN */"
_END = "/* CDEF END */"


# Each header's marked part joins the cdef; each .c file beside it is compiled
# in. migmgmt.h/.c (MIG create/destroy) stand apart from fastpath.h/.c.
_HEADERS = ("fastpath.h", "migmgmt.h")
_SOURCES = ("fastpath.c", "migmgmt.c")


def _cdef_text() -> str:
    parts = []
    for header in _HEADERS:
        with open(os.path.join(_SRC_DIR, header), encoding="utf-8") as f:
            text = f.read()
        start, end = text.index(_BEGIN) + len(_BEGIN), text.index(_END)
        parts.append(text[start:end])
    return "\n".join(parts)


def _rel(path: str) -> str:
    """setuptools wants sources relative to the project root (the build's cwd)."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "dra_driver.nvml._fastpath",
    "".join(f'#include "{header}"\n' for header in _HEADERS),
    sources=[_rel(os.path.join(_SRC_DIR, source)) for source in _SOURCES],
    include_dirs=[_SRC_DIR, include_dir()],
    libraries=["dl", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
