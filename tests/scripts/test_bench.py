"""Each benchmark measurement runs at its tiny size, so none rots between the rounds that use it.

The figures at this size mean nothing; what is checked is that each measurement runs alone (as
``python -m scripts.bench.<name> --tiny`` does), returns the figures the goals table reads, and that
the whole run prints that table.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# name: the figures the goals table reads from its result
FIGURES = {
    "epochs": lambda r: (
        [e["c_over_a"] for e in r["throughput"]]
        + [sum(e["profile"]["ms_per_update"].values()) for e in r["throughput"]]
        + [v for e in r["throughput"] for v in e["standardized_rows_per_s"].values()]
    ),
    "streaming": lambda r: [r["first_epoch_ratio"], r["later_epochs_ratio"], r["whole_over_streamed_speed"]],
    "startup": lambda r: [r["over_raw_script"], r["over_plain_lightning"]],
    "exact": lambda r: [r["closed_form"]["linreg_s"], r["convergence"]["fit_s"]],
    "memory": lambda r: [r["above_baseline_over_data"]],
}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(FIGURES))
def test_each_measurement_runs_alone_at_the_tiny_size(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    module = importlib.import_module(f"scripts.bench.{name}")
    out = tmp_path / f"{name}.json"
    result = module.main(["--tiny", "--json", str(out)])
    figures = FIGURES[name](result)
    assert figures and all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in figures), figures
    assert out.read_text().startswith("{")
    assert f"wrote {out}" in capsys.readouterr().out


def test_epochs_profile_splits_an_update_into_its_parts(capsys: pytest.CaptureFixture) -> None:
    from scripts.bench import epochs

    result = epochs.main(["--tiny", "--batch-sizes", "128", "--profile-updates", "8"])
    parts = result["throughput"][0]["profile"]["ms_per_update"]
    assert list(parts) == list(epochs.PARTS)
    for part in ("forward", "backward", "optimizer", "Lightning"):
        assert parts[part] > 0, parts  # each is found in the profile: a renamed function would read 0
    assert "ms per SGD update by part" in capsys.readouterr().out


def test_the_whole_run_prints_the_goals_table(tmp_path: Path) -> None:
    """The command CI runs: every measurement as a module of one process, then the table."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--tiny", "--only", "streaming", "exact"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split("goals (issue 24)")[1]
    assert "| Parquet folder read whole vs streamed, whole 4-epoch fit" in table
    assert "| exact solver 8,192 x 32 vs scikit-learn" in table
    assert "0.04-0.10 / 0.69-0.83" in table  # today's figures beside this run's
