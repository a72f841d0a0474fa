"""The README says what a newcomer needs and points only at what exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
README = (ROOT / "README.md").read_text()


def test_no_reference_to_files_that_are_not_in_the_repo() -> None:
    texts = {"README.md": README}
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in ROOT.glob("tests/bench/*.py")})
    for name, text in texts.items():
        for ref in re.findall(r"\b[\w./-]+\.md\b", text):
            assert (ROOT / ref).exists(), f"{name} refers to {ref}, which is not in the repo"
        assert "design notes" not in text.lower(), name


def test_every_python_m_module_in_the_readme_exists() -> None:
    modules = set(re.findall(r"python -m ([\w.]+)", README))
    assert "dra_driver.testing.simhost" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_commands_section_says_to_activate_the_virtualenv() -> None:
    commands = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    assert ". .venv/bin/activate" in commands


def test_requirements_name_the_c_compiler() -> None:
    assert "C compiler" in README and "python3-dev" in README


def test_fault_log_sharing_is_documented() -> None:
    assert "There is no shared default log" in " ".join(README.split())
    assert "export FAKE_NVML_FAULTS=" in README
