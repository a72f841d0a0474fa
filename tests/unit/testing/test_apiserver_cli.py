"""`python -m dra_driver.testing.apiserver`: bad ports and paths are one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.testing.apiserver.__main__ import main


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_busy_port_is_one_clear_line(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", str(busy_port)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: cannot listen on 127.0.0.1:{busy_port}: Address already in use "
        "(pick another --port, or 0 for a free one)\n"
    )


def test_an_unwritable_kubeconfig_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["--kubeconfig-out", str(blocker / "kubeconfig")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the kubeconfig: ") and err.count("\n") == 1


def test_a_port_out_of_range_is_a_usage_error(busy_port: int) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "dra_driver.testing.apiserver", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "a TCP port is a number from 0 to 65535, got '70000'" in r.stderr
    assert "Traceback" not in r.stderr
