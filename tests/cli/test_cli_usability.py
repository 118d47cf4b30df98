"""The command line as a new user meets it (issue 25's table): versions, help, one-name lists, no noise,
a summary without empty columns, and ``main([...])`` giving a script what it needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning
import numpy as np
import pandas as pd
import pytest
import torch

import linreg
from linreg.cli import main
from linreg.training.module import LinRegModule
from tests.helpers import ROOT, SEED, last_ckpt


@pytest.fixture
def houses(workdir):
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"sqft": rng.normal(1500, 300, n), "rooms": rng.integers(1, 6, n).astype(float)})
    df["price"] = 100 * df.sqft + 5000 * df.rooms + rng.normal(0, 1000, n)
    df.to_csv(workdir / "houses.csv", index=False)
    return workdir / "houses.csv"


@pytest.mark.slow
def test_version_names_linreg_torch_and_lightning() -> None:
    """A real process, as the console script runs: it prints and exits 0 (main returns None there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "linreg.cli", "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(f"linreg {linreg.__version__} (")
    assert f"torch {torch.__version__}" in run.stdout and f"lightning {lightning.__version__}" in run.stdout


def test_help_says_what_linreg_is_and_lists_every_subcommand(cli, capsys) -> None:
    assert cli("--help") == 0
    out = capsys.readouterr().out
    assert "Lightning Trainer command line tool" not in out
    assert "linear regression" in out.splitlines()[2]
    for name in ("fit", "validate", "test", "predict", "export"):
        [line] = [line for line in out.splitlines() if line.startswith(f"  {name} ")]
        assert len(line.split()) > 3, line  # the name and a one-line description


def test_fit_help_shows_linreg_groups_before_the_trainer(cli, capsys) -> None:
    assert cli("fit", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: linreg")
    order = ["--data.path", "--model.solver", "--checkpoint.keep", "--figures.enabled", "--trainer.accelerator"]
    assert [out.index(flag) for flag in order] == sorted(out.index(flag) for flag in order)
    assert "train a model on a table" in out


@pytest.mark.parametrize("form", [["--data.features", "sqft"], ["--data.features=sqft"]])
def test_one_feature_name_is_a_one_element_list(cli, workdir, houses, form) -> None:
    assert cli("fit", "--data.path", str(houses), "--data.target", "price", *form, "--trainer.max_epochs", "2") == 0
    summary = json.loads((last_ckpt(workdir).parent / "summary.json").read_text())
    assert summary["features"] == ["sqft"]


def test_a_default_fit_has_no_max_epochs_noise(cli, houses, capsys, recwarn) -> None:
    """linreg's stopping rule (within --model.tol of the optimum) ends a default fit, not Lightning's cap."""
    assert cli("fit", "--data.path", str(houses), "--data.target", "price") == 0
    out, err = capsys.readouterr()
    assert not [w for w in recwarn if "max_epochs" in str(w.message)]
    assert "max_epochs" not in out + err
    assert cli("fit", "--data.path", str(houses), "--data.target", "price", "--model.solver", "lstsq") == 0
    assert not [w for w in recwarn if "optimizer" in str(w.message)]  # lstsq has no SGD, by design


@pytest.mark.slow
def test_summary_prints_a_column_only_when_it_has_values(cli, houses, capsys) -> None:
    assert cli("fit", "--config", SEED) == 0  # the tutorial's exact line: no standard errors
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "closed form" in line)
    assert header.split() == ["target", "term", "sgd", "closed", "form"]
    assert cli("fit", "--data.path", str(houses), "--data.target", "price", "--trainer.max_epochs", "5") == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "closed form" in line)
    assert "std err" in header and "p>|t|" in header


def test_main_returns_the_fitted_module_and_the_summary(workdir, houses, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.argv", ["linreg"])
    fit = main(["fit", "--data.path", str(houses), "--data.target", "price", "--data.val_fraction", "0.2"])
    assert fit.subcommand == "fit" and isinstance(fit.model, LinRegModule)
    ckpt = last_ckpt(workdir)
    assert fit.summary == json.loads((ckpt.parent / "summary.json").read_text())
    assert fit.metrics["val/mse"] == fit.summary["metrics"]["val/mse"]
    # The objects stay usable from Python: the trainer validates the module on its data module.
    [metrics] = fit.trainer.validate(fit.model, datamodule=fit.datamodule, verbose=False)
    assert metrics["val/mse"] == pytest.approx(fit.metrics["val/mse"], rel=1e-6)
    validate = main(["validate", "--data.path", str(houses), "--data.val_fraction", "0.2", "--ckpt_path", str(ckpt)])
    assert validate.summary is None and validate.metrics["val/mse"] == pytest.approx(fit.metrics["val/mse"], rel=1e-6)
    export = main(["export", "--ckpt_path", str(ckpt), "--output", "m.pt2"])
    assert export.output == workdir / "m.pt2" or export.output.resolve() == (workdir / "m.pt2").resolve()
    monkeypatch.setattr("sys.argv", ["linreg", "--version"])
    assert main() is None  # the console script passes main()'s value to sys.exit: None is exit status 0
