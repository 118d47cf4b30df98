"""The `linreg` command end to end on the tutorial data: fit, predict, validate, test, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from linreg.training.module import LinRegModule
from linreg.tutorial.data import X_TUTORIAL, Y_TUTORIAL
from linreg.tutorial.stages import stage4_custom_module
from tests.helpers import SEED, last_ckpt


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
    # The saved model's loss, and the last epoch's loss taken before its update (the tutorial's last line).
    final = float(((ref.weights[-1] * X_TUTORIAL + ref.biases[-1] - Y_TUTORIAL) ** 2).mean())
    assert f"final loss      {final:.8f}" in out
    assert f"epoch loss      {ref.losses[-1]:.8f}" in out
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


@pytest.mark.parametrize(
    "accelerator, present",
    [
        ("gpu", torch.cuda.is_available() or torch.backends.mps.is_available()),
        ("cuda", torch.cuda.is_available()),
        ("mps", torch.backends.mps.is_available()),
        ("tpu", False),
    ],
)
def test_missing_accelerator_is_one_clear_line(cli, workdir, capsys, accelerator, present) -> None:
    if present:
        pytest.skip(f"this machine has a {accelerator}")
    assert cli("fit", "--config", SEED, "--trainer.accelerator", accelerator) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--trainer.accelerator {accelerator}: no " in err[0]
    assert "available here: cpu" in err[0]
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.slow
def test_trainer_switches_work_or_are_refused_in_one_line(cli, workdir, capsys) -> None:
    """Lightning settings a user may reach for: each works, or one line says why not."""
    assert cli("fit", "--config", SEED, "--trainer.logger", "false") == 0
    assert not (workdir / "lightning_logs").exists() and not (workdir / "config.yaml").exists()
    assert (workdir / "checkpoints" / "last.ckpt").is_file()  # no logger: Lightning's default_root_dir
    assert (
        cli("fit", "--config", SEED, "--trainer.logger", "false", "--trainer.max_epochs", "120", "--ckpt_path", "last")
        == 0
    )
    assert "120 epoch(s)" in capsys.readouterr().out  # --ckpt_path last finds it there too
    assert cli("fit", "--config", SEED, "--trainer.enable_checkpointing", "false") == 0
    assert not list(workdir.glob("lightning_logs/*/checkpoints/*.ckpt"))
    assert "checkpoint:" not in capsys.readouterr().out
    assert cli("fit", "--config", SEED, "--trainer.strategy", "ddp_spawn") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --trainer.strategy ddp" in err[0]
    for flag, value, word in [("devices", "0", "devices"), ("accelerator", "hpu", "hpu"), ("strategy", "fsdp", "fsdp")]:
        assert cli("fit", "--config", SEED, f"--trainer.{flag}", value) == 1  # Lightning's refusal, one line
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("linreg: error:") and word in err[0], err


@pytest.mark.parametrize("limit", [("--trainer.max_steps", "7"), ("--trainer.limit_train_batches", "3")])
def test_step_limits_count_sgd_updates(cli, workdir, limit) -> None:
    """max_steps and limit_train_batches mean SGD updates, although linreg groups updates per step."""
    common = ("--config", SEED, "--data.batch_size", "1", "--data.rows_per_step", "4", "--trainer.max_epochs", "5")
    assert cli("fit", *common, *limit) == 0
    ckpt = torch.load(last_ckpt(workdir), weights_only=True)
    assert ckpt["global_step"] == (7 if limit[0] == "--trainer.max_steps" else 3 * 5)


def test_early_stopping_can_monitor_any_validation_metric(cli, workdir, tmp_path) -> None:
    rows = pd.DataFrame({"x": range(40)}).assign(y=lambda d: 2.0 * d["x"] + 1)
    rows.to_csv(tmp_path / "line.csv", index=False)
    stop = ("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/r2")
    stop += ("--trainer.callbacks.mode", "max", "--trainer.callbacks.stopping_threshold", "0.99")
    data = ("--data.path", "line.csv", "--data.val_fraction", "0.25", "--data.standardize", "true")
    assert cli("fit", *data, "--model.lr", "0.1", "--trainer.max_epochs", "500", *stop) == 0
    ckpt = torch.load(last_ckpt(workdir), weights_only=True)
    assert ckpt["epoch"] < 500  # stopped by val/r2, which goes to the logger directly too


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


def test_a_command_leaves_no_process_wide_setting_behind(cli, workdir) -> None:
    """Warning filters, TensorBoard's thread hook and a streamed read's allocator pool are the command's
    own: a Python caller's process is as it was once main([...]) returns."""
    import threading
    import warnings

    pa = pytest.importorskip("pyarrow")
    (workdir / "parts").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        x = rng.normal(size=200)
        pd.DataFrame({"x": x, "y": 2 * x + 1}).to_parquet(workdir / "parts" / f"p{k}.parquet")
    pool, hook, filters = pa.default_memory_pool().backend_name, threading.excepthook, list(warnings.filters)
    flags = ("--data.stream", "true", "--data.batch_size", "64", "--trainer.max_epochs", "2")
    assert cli("fit", "--data.path", "parts", *flags, "--figures.enabled", "false") == 0
    assert pa.default_memory_pool().backend_name == pool
    assert threading.excepthook is hook and list(warnings.filters) == filters
