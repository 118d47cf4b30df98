"""Shared fixtures: run the real CLI in a temporary working folder. Helpers that tests import live in helpers.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from linreg.cli import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every CLI run writes lightning_logs/ under the working folder: give each test its own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """Run ``linreg`` in process; return its exit status (0 when it returns normally)."""
    monkeypatch.setattr("sys.argv", ["linreg"])  # LightningCLI warns when pytest's own argv is present

    def run(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    return run
