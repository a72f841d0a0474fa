"""`python -m dra_driver.testing.fakenvml`: clear one-line errors, and no shared fault log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dra_driver.testing import fakenvml


@pytest.fixture
def no_fault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (fakenvml.ENV_FAULTS, fakenvml.ENV_STATE_DIR, fakenvml.ENV_TOPOLOGY):
        monkeypatch.delenv(name, raising=False)


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = fakenvml.main(list(argv))
    return code, capsys.readouterr().err


def test_inject_into_an_unwritable_log_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_fault_env: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    log = blocker / "faults.jsonl"  # its parent is a file: not creatable, even as root
    code, err = _main(capsys, "inject", "--faults", str(log), "lost", "--gpu", "1")
    assert code == 2
    assert err.startswith(f"error: cannot write fault log {log}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_inject_without_a_fault_log_refuses(
    capsys: pytest.CaptureFixture[str], no_fault_env: None
) -> None:
    code, err = _main(capsys, "inject", "lost", "--gpu", "1")
    assert code == 2
    assert err.startswith("error: no fault log: give --faults PATH or set FAKE_NVML_FAULTS")


def test_inject_follows_the_environment_as_the_library_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(fakenvml.ENV_FAULTS, raising=False)
    monkeypatch.setenv(fakenvml.ENV_STATE_DIR, str(tmp_path))
    assert _main(capsys, "inject", "--topology", "small", "lost", "--gpu", "1") == (0, "")
    (line,) = (tmp_path / "small.faults.jsonl").read_text().splitlines()
    assert json.loads(line)["kind"] == "lost"
    assert fakenvml.fault_log_of("small") == tmp_path / "small.faults.jsonl"
    monkeypatch.setenv(fakenvml.ENV_FAULTS, str(tmp_path / "x.jsonl"))
    assert fakenvml.fault_log_of("small") == tmp_path / "x.jsonl"


def test_a_run_without_a_fault_log_opens_none(tmp_path: Path) -> None:
    """No shared per-user default: an `inject lost` of one run cannot reach a later one."""
    code = (
        "import os\n"
        "from dra_driver.testing import fakenvml\n"
        "nvml = fakenvml.load_into_pynvml()\n"
        "nvml.nvmlInit()\n"
        "assert nvml.nvmlDeviceGetCount() == 2\n"
        "nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(1))\n"
        "fds = []\n"
        "for n in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        fds.append(os.readlink(f'/proc/self/fd/{n}'))\n"
        "    except OSError:\n"
        "        pass  # the listing's own descriptor\n"
        "print([p for p in fds if 'fault' in p])\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (fakenvml.ENV_FAULTS, fakenvml.ENV_STATE_DIR, fakenvml.ENV_TOPOLOGY)
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # With a log named, the same run opens exactly it.
    env[fakenvml.ENV_FAULTS] = str(tmp_path / "mine.jsonl")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "mine.jsonl") in out.stdout


def test_a_fake_node_gets_a_log_of_its_own() -> None:
    a, b = fakenvml.FakeNode("small"), fakenvml.FakeNode("small")
    assert a.fault_log != b.fault_log
    assert a.env()[fakenvml.ENV_FAULTS] == str(a.fault_log)
