"""Issue 9, item 13: nothing per operation accumulates, and the C heap gives memory back.

The soak figure itself comes from tests/bench/bench_load.py (--duration 600);
these check the two mechanisms it found: hidden file names never enter
pathlib's intern table, and the process caps and trims glibc's arenas.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dra_driver import memory
from dra_driver.prepare.files import Recycler


def test_hidden_file_names_are_not_interned(tmp_path: Path) -> None:
    files = Recycler(tmp_path, "f.json", owner="me")
    for _ in range(3):
        temp = files.write_temp(b"x")
        base = os.path.basename(temp)
        probe = "".join(list(base))  # an equal string that is a different object
        assert sys.intern(probe) is probe, f"{base} was interned (by pathlib)"
        files.commit(temp, tmp_path / "f.json")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_arenas_are_capped_and_trim_works() -> None:
    code = (
        "from dra_driver import memory; import sys; "
        "ok = memory.limit_arenas(); memory.trim(); sys.exit(0 if ok else 3)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    if done.returncode == 3 and memory._LIBC is None:
        pytest.skip("not glibc")
    assert done.returncode == 0, done.stderr


def test_the_plugin_caps_arenas_before_it_starts_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from dra_driver import app

    calls: list[str] = []
    monkeypatch.setattr(memory, "limit_arenas", lambda: calls.append("arenas") or True)
    monkeypatch.setattr(app.asyncio, "run", lambda coro: (coro.close(), calls.append("run"))[1])
    monkeypatch.setattr(app, "socket_path_problems", lambda *a: [])
    settings = app.Settings(node_name="n")
    app.run(settings)
    assert calls == ["arenas", "run"]
