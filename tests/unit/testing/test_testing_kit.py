"""The kit's public face: every name resolves, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import dra_driver.testing as kit


def test_every_public_name_resolves_to_its_module() -> None:
    for name in kit.__all__:
        value = getattr(kit, name)
        module, attr = kit._EXPORTS[name]
        assert value is getattr(__import__(f"dra_driver.testing.{module}", fromlist=[attr]), attr)
    assert kit.__all__ == sorted(kit._EXPORTS)
    assert set(kit.__all__) <= set(dir(kit))


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        kit.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("no AttributeError")


def test_importing_the_kit_loads_no_heavy_module() -> None:
    code = (
        "import sys, dra_driver.testing as t\n"
        "heavy = [m for m in ('grpc', 'kubernetes', 'yaml', 'dra_driver.testing.apiserver',"
        " 'dra_driver.inventory') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "t.gpu_record\n"
        "assert 'grpc' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
