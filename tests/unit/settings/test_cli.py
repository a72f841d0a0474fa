"""The `dra-driver` command line as a newcomer meets it: clear errors, help, version."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from dra_driver import __version__, app, cli
from dra_driver import settings as settings_mod

COMMANDS = ("run", "inventory", "slices", "cleanup")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in settings_mod.FLAGS:
        monkeypatch.delenv(f.env, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting argparse's usage error (exit 2); returns stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# --- cleanup's kubeconfig errors: one line, like `run` -------------------------------------


def test_cleanup_with_a_missing_kubeconfig_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    rc = cli.main(["cleanup", "--node-name", "n1", "--kubeconfig", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        f"dra-driver cleanup: cannot use kubeconfig {missing}: no such file"
    ]


def test_cleanup_with_a_bad_yaml_kubeconfig_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nclusters: [oops\n")
    rc = cli.main(["cleanup", "--node-name", "n1", "--kubeconfig", str(bad)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith(
        f"dra-driver cleanup: cannot use kubeconfig {bad}"
    )
    assert "Traceback" not in lines[0]


# --- the node name ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "cleanup"])
def test_no_node_name_is_refused(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error([command], capsys)
    assert f"usage: dra-driver {command}" in err
    assert "no node name" in err and "--node-name" in err and "NODE_NAME" in err


def test_the_default_node_name_is_used_only_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.yaml")
    # Allowed: cleanup gets past the node name and fails later, on the kubeconfig.
    assert cli.main(["cleanup", "--allow-default-node-name", "--kubeconfig", missing]) == 2
    assert "cannot use kubeconfig" in capsys.readouterr().err
    monkeypatch.setenv("ALLOW_DEFAULT_NODE_NAME", "true")
    assert cli.main(["cleanup", "--kubeconfig", missing]) == 2
    assert "cannot use kubeconfig" in capsys.readouterr().err
    monkeypatch.setenv("NODE_NAME", "node-7")
    p = argparse.ArgumentParser()
    settings_mod.add_arguments(p, "run")
    assert settings_mod.from_args(p.parse_args([])).node_name == "node-7"


def test_a_dry_run_of_slices_needs_no_node_name() -> None:
    p = argparse.ArgumentParser()
    settings_mod.add_arguments(p, "slices")
    assert settings_mod.from_args(p.parse_args([])).node_name == settings_mod.LOCAL_NODE_NAME


# --- flag values -------------------------------------------------------------------------


def test_a_bogus_log_level_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["inventory", "--log-level", "bogus"], capsys)
    assert "--log-level" in err and "bogus" in err and "DEBUG" in err


def test_log_levels_are_case_insensitive() -> None:
    p = argparse.ArgumentParser()
    settings_mod.add_arguments(p, "inventory")
    assert settings_mod.from_args(p.parse_args(["--log-level", "debug"])).log_level == "DEBUG"


def test_a_bad_shutdown_grace_says_what_it_expects(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["run", "--node-name", "n", "--shutdown-grace", "abc"], capsys)
    assert "argument --shutdown-grace: not a number of seconds: 'abc'" in err
    assert "_positive" not in err


def test_an_unknown_flag_prints_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["inventory", "--no-such-flag"], capsys)
    assert err.startswith("usage: dra-driver inventory")
    assert "unrecognized arguments: --no-such-flag" in err


# --- version and help --------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"dra-driver {__version__}"


def test_the_plugin_logs_its_version_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Socket paths over the unix limit: run() stops before it starts anything.
    s = settings_mod.Settings(node_name="n", plugins_dir=tmp_path / ("x" * 120))
    with caplog.at_level(logging.INFO, logger="dra_driver.app"):
        assert app.run(s) == app.EXIT_USAGE
    assert f"dra-driver {__version__}" in caplog.text


def test_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "NVIDIA GPUs" in out and "--version" in out
    assert "dispatches to one module per subcommand" not in out  # the module docstring
    for command in COMMANDS:
        assert command in out


def test_every_command_has_a_description_and_every_flag_help() -> None:
    for name, parser in command_parsers().items():
        assert parser.description and len(parser.description) > 40, name
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_the_version_is_in_the_info_metric() -> None:
    from prometheus_client import CollectorRegistry

    from dra_driver.metrics import Metrics
    from dra_driver.testing.simhost import make_inventory

    metrics = Metrics("gpu.nvidia.com", "n", CollectorRegistry())
    metrics.watch(inventory=make_inventory(1, ()))
    (sample,) = [
        s for m in metrics.registry.collect() if m.name == "dra_driver_info" for s in m.samples
    ]
    assert sample.labels["version"] == __version__
