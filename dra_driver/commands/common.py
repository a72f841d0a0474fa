"""What every subcommand does with its parsed flags before it starts its work."""

from __future__ import annotations

import argparse
import dataclasses
import os

from .. import settings as settings_mod
from ..settings import Settings, SettingsError


def load_settings(args: argparse.Namespace) -> Settings:
    """The command's Settings, with --fake-nvml resolved; SettingsError says what is wrong."""
    return resolve_fake_nvml(settings_mod.from_args(args))


def resolve_fake_nvml(s: Settings) -> Settings:
    """Point NVML at the bundled fake library and select its topology (--fake-nvml).

    The fake library reads FAKE_NVML_TOPOLOGY at nvmlInit, so the choice is
    made through this process's environment (inherited by anything it
    spawns). The simulation kit is imported only here, only when asked for:
    the packages below the commands never import it.
    """
    if not s.fake_nvml:
        return s
    from ..testing import fakenvml

    try:
        fakenvml.topology_path(s.fake_nvml)  # fail early, with the list of names, on a typo
        library = fakenvml.library_path()
    except fakenvml.FakeNvmlError as e:
        raise SettingsError(f"--fake-nvml: {e}") from e
    os.environ["FAKE_NVML_TOPOLOGY"] = s.fake_nvml
    return dataclasses.replace(s, nvml_library=library)
