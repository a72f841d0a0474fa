"""Regenerate the committed gRPC stubs in dra_driver/kubelet/proto from proto/.

The .proto files keep the kubelet's directory layout (proto/dra/v1/api.proto,
...), but every one of them is called api.proto, which would collide as
Python modules. Each is therefore compiled under a flat, unique module name
inside this package, so the generated code imports its siblings as
`dra_driver.kubelet.proto.<module>_pb2` and needs no sys.path tricks.
Only the descriptor's file name changes; package, service, message names and
field numbers (everything on the wire) come from the .proto unchanged.

Usage: python -m dra_driver.kubelet.codegen [--check]
Needs grpcio-tools (a test/dev dependency, not a runtime one).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PACKAGE_DIR = Path("dra_driver") / "kubelet" / "proto"

# source .proto (relative to proto/) -> module name in dra_driver.kubelet.proto
SOURCES: dict[str, str] = {
    "pluginregistration/v1/api.proto": "pluginregistration_v1",
    "dra/v1/api.proto": "dra_v1",
    "dra/v1beta1/api.proto": "dra_v1beta1",
    "dra-health/v1alpha1/api.proto": "drahealth_v1alpha1",
    "dra-health/v1/api.proto": "drahealth_v1",
}

SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files() -> list[str]:
    """File names (in the package dir) that generation produces."""
    return sorted(f"{module}{suffix}" for module in SOURCES.values() for suffix in SUFFIXES)


def generate(out_dir: Path) -> None:
    """Compile every proto into out_dir (which receives the flat generated files)."""
    from grpc_tools import protoc  # dev dependency; imported only when generating

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dra-codegen-") as tmp:
        src_root = Path(tmp) / "src"
        gen_root = Path(tmp) / "gen"
        (src_root / PACKAGE_DIR).mkdir(parents=True)
        gen_root.mkdir()
        inputs = []
        for source, module in SOURCES.items():
            target = PACKAGE_DIR / f"{module}.proto"
            shutil.copyfile(PROTO_ROOT / source, src_root / target)
            inputs.append(str(target))
        well_known = Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{src_root}",
                f"-I{well_known}",
                f"--python_out={gen_root}",
                f"--pyi_out={gen_root}",
                f"--grpc_python_out={gen_root}",
                *inputs,
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        for name in generated_files():
            shutil.copyfile(gen_root / PACKAGE_DIR / name, out_dir / name)


def stale_files(committed_dir: Path) -> list[str]:
    """Generated files that differ from (or are missing in) committed_dir."""
    with tempfile.TemporaryDirectory(prefix="dra-codegen-check-") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        return [
            name
            for name in generated_files()
            if not (committed_dir / name).is_file()
            or not filecmp.cmp(fresh / name, committed_dir / name, shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    target = REPO_ROOT / PACKAGE_DIR
    if args.check:
        stale = stale_files(target)
        for name in stale:
            print(f"stale: {PACKAGE_DIR / name}", file=sys.stderr)
        return 1 if stale else 0
    generate(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
