"""The health monitor's flags and their environment twins."""

from __future__ import annotations

import argparse

import pytest

from dra_driver import settings as settings_mod
from dra_driver.health.policy import DEFAULT_IGNORED_XIDS

ENV = (
    "HEALTH_POLL_INTERVAL",
    "HEALTH_HOLD",
    "HEALTH_IGNORED_XIDS",
    "HEALTH_TEMPERATURE_THRESHOLD",
)


def parse(argv: list[str]) -> settings_mod.Settings:
    p = argparse.ArgumentParser()
    settings_mod.add_arguments(p)
    return settings_mod.from_args(p.parse_args(argv))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = parse([])
    assert s.health_poll_interval == 10.0
    assert s.health_hold == 600.0
    assert s.health_ignored_xids == DEFAULT_IGNORED_XIDS == (13, 31, 43, 45, 68, 109)
    assert s.health_temperature_threshold == 90


def test_env_twins_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTH_POLL_INTERVAL", "2.5")
    monkeypatch.setenv("HEALTH_HOLD", "30")
    monkeypatch.setenv("HEALTH_IGNORED_XIDS", "43, 13")
    monkeypatch.setenv("HEALTH_TEMPERATURE_THRESHOLD", "0")
    s = parse([])
    assert (s.health_poll_interval, s.health_hold) == (2.5, 30.0)
    assert s.health_ignored_xids == (13, 43)
    assert s.health_temperature_threshold == 0
    s = parse(["--health-hold=0", "--health-ignored-xids=none", "--health-poll-interval=0.1"])
    assert (s.health_hold, s.health_ignored_xids, s.health_poll_interval) == (0.0, (), 0.1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--health-poll-interval=0"], "must be positive"),
        (["--health-poll-interval=nan"], "must be positive"),
        (["--health-poll-interval=soon"], "not a number"),
        (["--health-hold=-1"], "must not be negative"),
        (["--health-ignored-xids=13,x"], "comma-separated XID numbers"),
        (["--health-ignored-xids=-4"], "non-negative"),
        (["--health-temperature-threshold=300"], "0 (off) to 200"),
    ],
)
def test_bad_values_are_clear_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_env_value_is_a_usage_error_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEALTH_HOLD", "forever")
    with pytest.raises(SystemExit):
        parse([])
    assert "--health-hold" in capsys.readouterr().err
