"""settings.FLAGS: one table makes every subcommand's flags, env twins, defaults and help."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from dra_driver import settings as settings_mod
from dra_driver.commands.common import load_settings
from dra_driver.health.monitor import DEFAULT_POLL_INTERVAL
from dra_driver.health.policy import DEFAULT_HOLD_SECONDS
from dra_driver.kubelet.options import PluginOptions
from dra_driver.settings import FLAGS, SettingsError

PACKAGE = Path(settings_mod.__file__).parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in FLAGS:
        monkeypatch.delenv(f.env, raising=False)
    monkeypatch.delenv("FAKE_NVML_TOPOLOGY", raising=False)


def parser_for(command: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"dra-driver {command}")
    settings_mod.add_arguments(p, command)
    return p


def parse(command: str | None, argv: list[str]) -> settings_mod.Settings:
    return settings_mod.from_args(parser_for(command).parse_args(argv))


def test_every_flag_has_an_env_twin_help_and_a_settings_field() -> None:
    fields = set(settings_mod.Settings.__dataclass_fields__)
    envs = [f.env for f in FLAGS]
    assert len(set(envs)) == len(envs)
    for f in FLAGS:
        assert f.flag.startswith("--") and f.env.isupper() and f.help and f.commands, f
        assert f.dest in fields or f.dest == "allow_default_node_name", f


def test_help_shows_each_flags_env_and_default() -> None:
    text = " ".join(parser_for("run").format_help().split())
    for f in FLAGS:
        if "run" in f.commands:
            assert f"env {f.env}" in text, f.flag
    assert "(env SHUTDOWN_GRACE; default: 5.0)" in text
    assert "(env HEALTH_IGNORED_XIDS; default: 13,31,43,45,68,109)" in text
    assert "(env DEVICE_HEALTH; default: on)" in text


def test_each_subcommand_shows_only_the_flags_it_uses() -> None:
    def flags(command: str) -> set[str]:
        return {o for a in parser_for(command)._actions for o in a.option_strings}

    assert "--kubeconfig" not in flags("inventory") and "--health" not in flags("cleanup")
    assert "--nvml-library" not in flags("cleanup") and "--driver-name" not in flags("inventory")
    assert {"--shutdown-grace", "--registration-backoff", "--health-resend-interval"} <= flags(
        "run"
    )
    assert "--shutdown-grace" not in flags("slices")


def test_the_run_only_flags_have_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUTDOWN_GRACE", "2.5")
    monkeypatch.setenv("REGISTRATION_BACKOFF", "0.5")
    monkeypatch.setenv("HEALTH_RESEND_INTERVAL", "3")
    options = parse("run", ["--node-name=n", "--shutdown-grace=7"]).plugin_options()
    assert (options.shutdown_grace, options.registration_backoff) == (7.0, 0.5)
    assert options.health_resend_interval == 3.0


def test_defaults_come_from_the_components_that_own_them() -> None:
    s = parse("run", ["--node-name=n"])
    assert s.health_poll_interval == DEFAULT_POLL_INTERVAL
    assert s.health_hold == DEFAULT_HOLD_SECONDS
    assert s.plugin_options() == PluginOptions()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("1", True), ("true", True), ("Yes", True), ("on", True)],
        *[("0", False), ("FALSE", False), ("no", False), ("off", False)],
    ],
)
def test_booleans_are_parsed_one_way(
    text: str, value: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVICE_HEALTH", text)
    monkeypatch.setenv("PARTITIONABLE_DEVICES", text)
    s = parse("run", ["--node-name=n"])
    assert (s.health, s.partitionable_devices) == (value, value)


@pytest.mark.parametrize("var", ["DEVICE_HEALTH", "PARTITIONABLE_DEVICES"])
def test_a_bad_boolean_env_value_is_a_usage_error_naming_the_variable(
    var: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(var, "maybe")
    with pytest.raises(SystemExit) as exc:
        parse("run", ["--node-name=n"])
    assert exc.value.code == 2
    assert f"from environment variable {var}" in capsys.readouterr().err


def test_the_flag_wins_over_its_env_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE_HEALTH", "maybe")  # never parsed: the flag decides
    assert parse("run", ["--node-name=n", "--no-health"]).health is False


def test_hermetic_environ_drops_every_flags_variable() -> None:
    environ = {f.env: "x" for f in FLAGS} | {"PATH": "/usr/bin"}
    assert settings_mod.hermetic_environ(environ) == {"PATH": "/usr/bin"}


def test_fake_nvml_is_resolved_by_the_commands_not_by_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    args = parser_for("inventory").parse_args(["--fake-nvml", "no-such-topology"])
    s = settings_mod.from_args(args)  # no side effect, no error: settings only parses
    assert s.fake_nvml == "no-such-topology" and s.nvml_library is None
    assert "FAKE_NVML_TOPOLOGY" not in os.environ
    with pytest.raises(SettingsError, match="--fake-nvml: unknown topology"):
        load_settings(args)


def test_fake_nvml_help_names_every_shipped_topology() -> None:
    from dra_driver.testing.fakenvml import topology_names

    (flag,) = [f for f in FLAGS if f.flag == "--fake-nvml"]
    names = flag.help.split("(", 1)[1].split(", or a topology file", 1)[0]
    assert set(names.split(", ")) == set(topology_names())


# Layers below the commands: none reads process settings or the simulation kit.
COMPONENTS = ("prepare", "slices", "kubelet", "health", "inventory.py", "nvml", "metrics.py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
            out.update(f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_never_import_settings_or_the_kit(component: str) -> None:
    root = PACKAGE / component
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    for path in files:
        for name in _imports(path):
            parts = name.lstrip(".").split(".")
            assert "settings" not in parts[:2] and "testing" not in parts[:2], (path, name)
