"""Packaging contracts: the conda file matches pyproject, the CLI answers."""

from __future__ import annotations

import re
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

import pacsim

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].strip().lower()


def test_environment_yml_names_every_runtime_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (ROOT / "environment.yml").read_text()
    listed = {_name(line.strip()[2:]) for line in env.splitlines()
              if line.strip().startswith("- ") and not line.strip().startswith("- -")}
    for dep in deps:
        name = _name(dep)
        assert CONDA_NAMES.get(name, name) in listed, f"environment.yml lacks {name}"
    assert "pip install -e ." in env or "- -e ." in env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsim.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_cli_version_and_help():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pacsim {pacsim.__version__}"
    out = _cli("--help")
    assert out.returncode == 0 and "demo" in out.stdout


@pytest.mark.slow
def test_cli_bad_argument_is_one_line_exit_2():
    out = _cli("demo", "--n-target", "0")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--n-target must be positive" in out.stderr


@pytest.mark.slow
def test_submodules_are_reachable_from_the_package():
    run = subprocess.run([sys.executable, "-c",
                          "import pacsim; m = pacsim.models.MLP(2, 1, hidden=[4]); "
                          "print(type(m).__name__, callable(pacsim.transfer.select))"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["MLP", "True"]
