"""The `linreg` command end to end on the tutorial data: fit, predict, validate, test, refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from linreg.module import LinRegModule
from linreg.reference import stage4_custom_module
from tests.conftest import SEED, last_ckpt


@pytest.fixture
def fitted(cli, workdir):
    assert cli("fit", "--config", SEED) == 0
    return last_ckpt(workdir)


def test_fit_prints_summary_and_saves_it(cli, workdir, capsys) -> None:
    assert cli("fit", "--config", SEED) == 0
    out = capsys.readouterr().out
    ckpt = last_ckpt(workdir)
    ref = stage4_custom_module(seed=0)
    assert f"w = {ref.weights[-1]:.3f}, b = {ref.biases[-1]:.3f}, prediction f(5) = {ref.after:.3f}" in out
    assert f"final loss      {ref.losses[-1]:.8f}" in out
    assert str(ckpt) in out or ckpt.name in out
    summary = json.loads((ckpt.parent / "summary.json").read_text())
    assert summary["epochs"] == 100 and summary["steps"] == 100
    assert summary["prediction_at_5"]["y"] == pytest.approx(ref.after, abs=1e-6)
    # The closed form on Y = 2X is exact: w = 2, b = 0.
    cf = summary["targets"]["y"]["closed_form"]
    assert cf["coef"]["x"] == pytest.approx(2.0, abs=1e-9) and cf["intercept"] == pytest.approx(0.0, abs=1e-9)


def test_predict_writes_targets_in_input_order(cli, workdir, fitted) -> None:
    assert cli("predict", "--config", SEED, "--ckpt_path", str(fitted), "--output", "predictions.csv") == 0
    df = pd.read_csv(workdir / "predictions.csv")
    assert list(df.columns) == ["y"] and len(df) == 1
    assert df["y"][0] == pytest.approx(stage4_custom_module(seed=0).after, abs=1e-5)
    # predict leaves no log folder behind
    assert len(list(workdir.glob("lightning_logs/version_*"))) == 1


def test_load_from_checkpoint_alone_restores_the_module(fitted) -> None:
    model = LinRegModule.load_from_checkpoint(fitted)
    assert model.hparams.feature_names == ["x"] and model.hparams.target_names == ["y"]
    expected = stage4_custom_module(seed=0).after
    with torch.no_grad():
        assert model(torch.tensor([[5.0]])).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("subcommand", ["predict", "validate", "test"])
def test_no_checkpoint_is_refused(cli, workdir, capsys, subcommand) -> None:
    assert cli(subcommand, "--config", SEED) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("linreg: error:") and "--ckpt_path" in err[-1] and "untrained" in err[-1]
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_report_metrics(cli, fitted, capsys, subcommand) -> None:
    assert cli(subcommand, "--config", SEED, "--ckpt_path", str(fitted)) == 0
    prefix = "val" if subcommand == "validate" else "test"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{prefix}/mse")]
    # No held-out split on the tutorial data: the metric is the trained model's MSE on the 4 points.
    model = LinRegModule.load_from_checkpoint(fitted)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    with torch.no_grad():
        mse = torch.mean((model(x) - 2 * x) ** 2).item()
    assert lines and float(lines[0].split()[-1]) == pytest.approx(mse, rel=1e-5)


def test_print_config(cli, capsys) -> None:
    assert cli("fit", "--config", SEED, "--print_config") == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "max_epochs: 100" in out


def test_optimizer_flags_cannot_replace_sgd(cli, capsys) -> None:
    assert cli("fit", "--config", SEED, "--optimizer", "Adam") == 2
    assert "optimizer" in capsys.readouterr().err


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_flag_without_gpu_is_one_clear_line(cli, workdir, capsys, accelerator) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli("fit", "--config", SEED, "--trainer.accelerator", accelerator) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "available here: cpu" in err[0]
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_and_predict_on_gpu(cli, workdir) -> None:
    assert cli("fit", "--config", SEED, "--trainer.accelerator", "gpu") == 0
    ckpt = last_ckpt(workdir)
    assert (
        cli(
            "predict", "--config", SEED, "--trainer.accelerator", "gpu", "--ckpt_path", str(ckpt), "--output", "gpu.csv"
        )
        == 0
    )
    assert pd.read_csv(workdir / "gpu.csv")["y"][0] == pytest.approx(stage4_custom_module(seed=0).after, abs=1e-4)
