"""The package type-checks under mypy --strict, and the Python code passes ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

HERE = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def test_mypy_strict() -> None:
    done = subprocess.run([tool("mypy")], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    paths = ["src", "tests", str(REPO_ROOT / "examples" / "extraction" / "extract.py")]
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [tool("ruff"), *args, "--config", "pyproject.toml", *paths],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
