"""Native parts of the build: the cffi NVML fast path and the fake libnvidia-ml.

Metadata lives in pyproject.toml; this file only adds what setuptools cannot
declare statically (compiled code and the nvml.h location).
"""

import glob
import os
import sys

from setuptools import Extension, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "native"))
from nvml_headers import include_dir
from toolchain import missing_toolchain

if any(
    cmd in sys.argv
    for cmd in ("build_ext", "build", "bdist_wheel", "install", "develop", "editable_wheel")
):
    problem = missing_toolchain()
    if problem:
        sys.exit(f"error: {problem}")

fake_nvml = Extension(
    # Not a Python module: a plain shared library exporting the NVML C ABI,
    # built through setuptools so `pip install` places it inside the package.
    "dra_driver.testing._fakenvml",
    sources=[*sorted(glob.glob("native/fakenvml/*.c")), "native/third_party/cjson/cJSON.c"],
    include_dirs=[include_dir(), "native/fakenvml", "native/third_party/cjson"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-fvisibility=default"],
    extra_link_args=["-Wl,-soname,libnvidia-ml.so.1", "-lpthread"],
)

records = Extension(
    # The CPython-API half of the fast path: change detection over, and record
    # building from, the fp_inventory_t that the cffi module fills.
    "dra_driver.nvml._records",
    sources=["native/fastpath/records.c"],
    include_dirs=[include_dir(), "native/fastpath"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

setup(
    ext_modules=[fake_nvml, records],
    cffi_modules=["native/build_fastpath.py:ffibuilder"],
)
