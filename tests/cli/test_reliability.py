"""Every bad input answered with one clear line, divergence stopped, interrupted fits resumable,
resumed fits bit-identical, outputs atomic, checkpoints loaded weights-only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from linreg.errors import LinRegError
from linreg.io import atomic_write
from tests.helpers import ROOT, SEED, error_line, last_ckpt, scalars, weights


@pytest.fixture
def table(workdir: Path) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40)})
    df["y"] = 3 * df["a"] - df["b"] + 1
    df.to_csv(workdir / "t.csv", index=False)
    return workdir / "t.csv"


@pytest.fixture
def trained(cli, table: Path, workdir: Path) -> Path:
    assert cli("fit", "--data.path", str(table), "--trainer.max_epochs", "3") == 0
    return last_ckpt(workdir)


def test_missing_data_file_fails_before_any_log_folder(cli, workdir, capsys) -> None:
    assert cli("fit", "--data.path", "nope.csv") == 1
    assert "nope.csv: no such file" in error_line(capsys)
    assert not (workdir / "lightning_logs").exists()


def test_unreadable_data_file(cli, workdir, capsys) -> None:
    (workdir / "bad.parquet").write_bytes(b"not parquet at all")
    assert cli("fit", "--data.path", "bad.parquet") == 1
    assert "bad.parquet: cannot read as parquet" in error_line(capsys)
    assert not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize("args", [("--data.no_such_flag", "1"), ("--trainer.max_epochs", "many")])
def test_unknown_flag_or_wrong_type_is_the_cli_error_exit_2(cli, capsys, args) -> None:
    assert cli("fit", "--config", SEED, *args) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("bad, shown", [("nan", "nan"), ("inf", "inf"), ("1e39", "too large for float32")])
def test_non_finite_training_value_names_row_and_column(cli, workdir, table, capsys, bad, shown) -> None:
    lines = table.read_text().splitlines()
    cells = lines[3].split(",")
    cells[1] = bad
    lines[3] = ",".join(cells)
    table.write_text("\n".join(lines) + "\n")
    assert cli("fit", "--data.path", str(table)) == 1
    assert f"column 'b' row 3 is {shown}" in error_line(capsys)
    assert not (workdir / "lightning_logs").exists()


def test_non_numeric_column_is_named(cli, workdir, capsys) -> None:
    pd.DataFrame({"a": ["1", "2", "oops", "4"], "y": [1.0, 2, 3, 4]}).to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--data.features", "[a]") == 1
    assert "column 'a' is not numeric (row 3: 'oops')" in error_line(capsys)


def test_unknown_column_and_too_few_rows(cli, table, capsys) -> None:
    assert cli("fit", "--data.path", str(table), "--data.target", "price") == 1
    assert "no target column(s) ['price']" in error_line(capsys)
    assert cli("fit", "--data.path", str(table), "--data.features", "[a, nope]") == 1
    assert "no column 'nope'; columns are ['a', 'b', 'y']" in error_line(capsys)
    assert cli("fit", "--data.path", str(table), "--data.val_fraction", "0.01") == 1
    assert "too few rows" in error_line(capsys)


@pytest.mark.parametrize(
    "frame, expected",
    [
        (pd.DataFrame({"a": [1.0]}), "missing feature column(s) ['b']"),
        (pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}), "unexpected column(s) ['c']"),
        (pd.DataFrame({"a": [1.0, np.nan], "b": [2.0, 2.0]}), "column 'a' row 2 is nan"),
    ],
)
def test_bad_predict_input_writes_nothing(cli, workdir, trained, capsys, frame, expected) -> None:
    frame.to_csv(workdir / "new.csv", index=False)
    assert cli("predict", "--ckpt_path", str(trained), "--data.path", "new.csv", "--output", "p.csv") == 1
    assert expected in error_line(capsys)
    assert not (workdir / "p.csv").exists()


def test_checkpoint_from_another_feature_set(cli, workdir, trained, capsys) -> None:
    # A table with other columns than the model was trained on: both sets named.
    pd.DataFrame({"a": [1.0], "c": [2.0]}).to_csv(workdir / "other.csv", index=False)
    assert cli("predict", "--ckpt_path", str(trained), "--data.path", "other.csv", "--output", "p.csv") == 1
    line = error_line(capsys)
    assert "missing feature column(s) ['b']" in line and "unexpected column(s) ['c']" in line
    assert "the model expects features ['a', 'b']" in line and not (workdir / "p.csv").exists()
    # Asking for other features by flag.
    assert cli("predict", "--ckpt_path", str(trained), "--data.features", "[a, c]") == 1
    line = error_line(capsys)
    assert "['a', 'c']" in line and "['a', 'b']" in line


@pytest.mark.slow
def test_model_flag_contradicting_checkpoint(cli, workdir, table, capsys) -> None:
    """Every value the user gives must agree with the checkpoint, even one equal to the default."""
    fit = ("fit", "--data.path", str(table), "--trainer.max_epochs", "2")
    assert cli(*fit, "--model.lr", "0.1", "--data.standardize", "true") == 0
    ckpt = str(last_ckpt(workdir))
    predict = ("predict", "--ckpt_path", ckpt, "--data.path", str(table))
    assert cli(*predict, "--model.lr", "0.5") == 1
    assert "--model.lr 0.5 contradicts the checkpoint" in error_line(capsys)
    assert cli(*predict, "--model.lr", "0.01") == 1  # 0.01 is the default: still not what was trained
    line = error_line(capsys)
    assert "--model.lr 0.01 contradicts the checkpoint" in line and "trained with 0.1;" in line
    assert cli(*predict, "--data.standardize", "false") == 1
    assert "--data.standardize false contradicts the checkpoint" in error_line(capsys)
    (workdir / "c.yaml").write_text("model:\n  momentum: 0.9\n")  # a config file is given too
    assert cli(*predict, "--config", "c.yaml") == 1
    assert "--model.momentum 0.9 contradicts the checkpoint" in error_line(capsys)
    # Values that agree, and no values at all, are fine: the checkpoint's settings are used.
    assert cli(*predict, "--model.lr", "0.1", "--data.standardize", "true", "--output", "a.csv") == 0
    assert cli(*predict, "--output", "b.csv") == 0
    assert pd.read_csv(workdir / "a.csv").equals(pd.read_csv(workdir / "b.csv"))


@pytest.mark.slow
def test_resume_with_the_runs_own_saved_config(cli, workdir, table, capsys) -> None:
    """The config.yaml a fit saves can drive the resume: its nulls ("from the data") agree with any
    checkpoint, and it holds no ckpt_path that would clear the flag given before it."""
    assert cli("fit", "--data.path", str(table), "--model.lr", "0.05", "--trainer.max_epochs", "3") == 0
    saved = next(workdir.glob("lightning_logs/version_0/config.yaml"))
    assert "ckpt_path" not in saved.read_text() and "features: null" in saved.read_text()
    assert cli("fit", "--ckpt_path", "last", "--config", str(saved), "--trainer.max_epochs", "5") == 0
    assert "5 epoch(s)" in capsys.readouterr().out
    assert cli("predict", "--config", str(saved), "--ckpt_path", "last", "--output", "p.csv") == 0


def test_bad_checkpoints_are_one_line(cli, workdir, trained, capsys) -> None:
    assert cli("predict", "--ckpt_path", "missing.ckpt") == 1
    assert "missing.ckpt: no such file" in error_line(capsys)
    (workdir / "text.ckpt").write_text("hello")
    assert cli("predict", "--ckpt_path", "text.ckpt") == 1
    assert "not a readable checkpoint" in error_line(capsys)
    data = trained.read_bytes()
    (workdir / "half.ckpt").write_bytes(data[: len(data) // 2])
    assert cli("predict", "--ckpt_path", "half.ckpt") == 1
    assert "half.ckpt: not a readable checkpoint" in error_line(capsys)
    torch.save({"something": torch.zeros(1)}, workdir / "other.ckpt")
    assert cli("predict", "--ckpt_path", "other.ckpt") == 1
    assert "not a linreg checkpoint" in error_line(capsys)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_pickle_payload_does_not_run(cli, workdir, capsys) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {"in_features": 1}, "evil": _Payload()}, workdir / "evil.ckpt")
    assert cli("predict", "--ckpt_path", "evil.ckpt") == 1
    assert "refused" in error_line(capsys)
    assert not (workdir / "PWNED").exists()


def test_divergence_stops_at_first_non_finite_loss(cli, workdir, capsys) -> None:
    x = np.linspace(0, 100, 50)
    pd.DataFrame({"x": x, "y": 2 * x + 1}).to_csv(workdir / "wide.csv", index=False)
    raw = ("--data.standardize", "false")  # raw units (x up to 100) are what make lr 0.1 diverge
    assert cli("fit", "--data.path", "wide.csv", *raw, "--model.lr", "0.1", "--trainer.max_epochs", "500") == 1
    line = error_line(capsys)
    assert "training diverged" in line and "--data.standardize true" in line and "lower --model.lr" in line
    epoch = int(line.split("at epoch ")[1].split(",")[0])
    assert epoch < 100  # stopped at the first non-finite loss, not after 500 epochs
    assert not list(workdir.glob("lightning_logs/*/checkpoints/*.ckpt"))


def test_outputs_are_not_overwritten_without_flag(cli, workdir, trained, table, capsys) -> None:
    (workdir / "p.csv").write_text("precious\n")
    assert cli("predict", "--ckpt_path", str(trained), "--data.path", str(table), "--output", "p.csv") == 1
    assert "already exists" in error_line(capsys) and (workdir / "p.csv").read_text() == "precious\n"
    assert (
        cli(
            "predict",
            "--ckpt_path",
            str(trained),
            "--data.path",
            str(table),
            "--output",
            "p.csv",
            "--overwrite",
            "true",
        )
        == 0
    )
    assert len(pd.read_csv(workdir / "p.csv")) == 40


def test_atomic_write_leaves_no_half_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")

    def crash(path: Path) -> None:
        path.write_text("half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(LinRegError):
        atomic_write(target, lambda p: p.write_text("new"), overwrite=False)


@pytest.mark.slow
def test_resume_shuffled_momentum_is_bit_identical(cli, workdir, table) -> None:
    common = (
        "--data.path",
        str(table),
        "--data.batch_size",
        "8",
        "--data.shuffle",
        "blocks",
        "--model.momentum",
        "0.9",
        "--model.lr",
        "0.01",
    )
    assert cli("fit", *common, "--trainer.max_epochs", "100") == 0
    straight = weights(last_ckpt(workdir))
    assert cli("fit", *common, "--trainer.max_epochs", "50") == 0
    half = last_ckpt(workdir)
    assert cli("fit", *common, "--trainer.max_epochs", "100", "--ckpt_path", str(half)) == 0
    resumed = weights(last_ckpt(workdir))
    assert torch.equal(straight[0], resumed[0]) and torch.equal(straight[1], resumed[1])
    assert not torch.equal(weights(half)[0], resumed[0])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_resumable_checkpoint(cli, workdir, capsys, sig) -> None:
    linreg = [sys.executable, "-m", "linreg.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*linreg, "fit", "--config", SEED, "--trainer.max_epochs", "1000000"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # generous: CI machines are shared
        while not list(workdir.glob("lightning_logs/version_0/events.out.tfevents*")):
            assert time.monotonic() < deadline and proc.poll() is None, "fit never started"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "resume with" in out
    ckpt = last_ckpt(workdir)
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    # The resume itself runs in process: it is an ordinary fit from a checkpoint.
    assert cli("fit", "--config", SEED, "--trainer.max_epochs", str(epoch + 3), "--ckpt_path", "last") == 0
    assert f"{epoch + 3} epoch(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sig, during, limits",
    [
        ("SIGINT", "training", ("--data.rows_per_step", "8")),  # steps of 2 updates
        ("SIGTERM", "training", ("--data.rows_per_step", "8")),
        ("SIGTERM", "validation", ("--trainer.val_check_interval", "3")),  # validation inside the epoch
    ],
)
@pytest.mark.slow
def test_stop_mid_epoch_then_resume_is_bit_identical(cli, workdir, table, capsys, sig, during, limits) -> None:
    """A real signal in the middle of an epoch (or of a validation): the fit stops after the next
    training step, saves, and the resumed fit finishes that epoch with the same batches. Weights, and
    every scalar the two runs logged together, equal those of a straight run."""
    common = (
        *("--data.path", str(table), "--data.val_fraction", "0.2", "--data.batch_size", "4", *limits),
        *("--data.shuffle", "rows", "--model.momentum", "0.9", "--trainer.max_epochs", "3"),
    )  # 32 training rows: 8 updates an epoch
    assert cli("fit", *common) == 0
    straight = last_ckpt(workdir)
    signal_at = ("--trainer.callbacks+=tests.signals.SignalAt", "--trainer.callbacks.step", "9")
    signal_at += ("--trainer.callbacks.signal", sig, "--trainer.callbacks.during", during)
    assert cli("fit", *common, *signal_at) == (130 if sig == "SIGINT" else 143)
    err = capsys.readouterr().err
    assert f"stopped by {'Ctrl-C' if sig == 'SIGINT' else 'SIGTERM'} at epoch 1, step 12" in err
    stopped = last_ckpt(workdir)
    assert torch.load(stopped, weights_only=True)["global_step"] == 12  # mid-epoch: 8 < 12 < 16
    assert cli("fit", *common, "--ckpt_path", "last") == 0
    resumed = last_ckpt(workdir)
    assert all(torch.equal(a, b) for a, b in zip(weights(straight), weights(resumed), strict=True))
    one, first, second = (scalars(p.parents[1]) for p in (straight, stopped, resumed))
    assert "val/r2" in one and "train/loss" in one
    for tag, points in one.items():
        assert sorted(set(first.get(tag, [])) | set(second.get(tag, []))) == points, tag
    assert cli("fit", *common, "--data.batch_size", "8", "--ckpt_path", str(stopped)) == 1
    line = error_line(capsys)
    assert "batch_size 4 then, 8 now" in line and "resume it with the same --data settings" in line


def test_mismatched_resume_leaves_no_run_folder(cli, workdir, table, capsys) -> None:
    """A refusal raised once the trainer runs (here: resuming mid-epoch with another batch size)
    removes the log folder it made."""
    common = ("--data.path", str(table), "--data.batch_size", "4", "--data.rows_per_step", "8")
    common += ("--model.lr", "0.01", "--trainer.max_epochs", "3")  # steps of 2 updates, 10 updates an epoch
    signal_at = ("--trainer.callbacks+=tests.signals.SignalAt", "--trainer.callbacks.step", "9")
    assert cli("fit", *common, *signal_at, "--trainer.callbacks.signal", "SIGTERM") == 143
    versions = sorted(p.name for p in (workdir / "lightning_logs").iterdir())
    assert cli("fit", *common, "--data.batch_size", "8", "--ckpt_path", "last") == 1
    assert "batch_size 4 then, 8 now" in error_line(capsys)
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == versions


def test_table_changed_before_a_resume_is_refused(cli, workdir, table, capsys) -> None:
    """Stopped mid-epoch, the table edited (same rows, one value changed): the resume is refused,
    naming the change; the checkpoint stays as it was."""
    common = ("--data.path", str(table), "--data.batch_size", "4", "--data.rows_per_step", "8")
    common += ("--model.lr", "0.01", "--trainer.max_epochs", "3")  # steps of 2 updates, 10 updates an epoch
    signal_at = ("--trainer.callbacks+=tests.signals.SignalAt", "--trainer.callbacks.step", "9")
    assert cli("fit", *common, *signal_at, "--trainer.callbacks.signal", "SIGTERM") == 143
    stopped = last_ckpt(workdir)
    assert torch.load(stopped, weights_only=True)["global_step"] % 10  # in the middle of an epoch
    saved = stopped.read_bytes()
    df = pd.read_csv(table)
    df.loc[17, "a"] += 1.0
    df.to_csv(table, index=False)
    assert cli("fit", *common, "--ckpt_path", "last") == 1
    assert f"{table} changed since the checkpoint was written" in error_line(capsys)
    assert stopped.read_bytes() == saved
    # Predicting or validating on another table is what a checkpoint is for: not refused.
    assert cli("validate", "--data.path", str(table), "--ckpt_path", str(stopped)) == 0


def test_fast_dev_run_saves_nothing_last_would_take(cli, workdir, trained, capsys) -> None:
    assert cli("fit", "--data.path", "t.csv", "--trainer.fast_dev_run", "true") == 0
    assert "fast_dev_run is a debug run; it saves nothing" in capsys.readouterr().out
    assert not (workdir / "checkpoints").exists()
    assert sorted(workdir.rglob("*.ckpt")) == [trained]


def test_predict_on_no_rows_is_one_line(cli, workdir, trained, capsys) -> None:
    np.save(workdir / "empty.npy", np.zeros(0, dtype=[("a", "f8"), ("b", "f8")]))
    assert cli("predict", "--ckpt_path", str(trained), "--data.path", "empty.npy", "--output", "p.csv") == 1
    assert "empty.npy: no data rows" in error_line(capsys)
    assert not (workdir / "p.csv").exists()


def test_id_column_named_like_the_target_is_refused(cli, workdir, trained, capsys) -> None:
    pd.read_csv(workdir / "t.csv").to_csv(workdir / "new.csv", index=False)
    args = ("predict", "--ckpt_path", str(trained), "--data.path", "new.csv", "--output", "p.csv")
    assert cli(*args, "--data.id_column", "y") == 1
    assert "--data.id_column 'y' is the target's name" in error_line(capsys)
    assert not (workdir / "p.csv").exists()


@pytest.mark.parametrize("edit", ["features", "names", "nan", "bias"])
def test_inconsistent_or_non_finite_checkpoint_is_one_line(cli, workdir, trained, capsys, edit) -> None:
    ckpt = torch.load(trained, weights_only=True)
    if edit == "features":
        ckpt["hyper_parameters"]["in_features"] = 3  # the weights stay 1×2
        expected = "inconsistent checkpoint: its hyperparameters say 3 feature(s)"
    elif edit == "names":
        ckpt["hyper_parameters"]["feature_names"] = ["a", "b", "c"]
        expected = "inconsistent checkpoint"
    elif edit == "nan":
        ckpt["state_dict"]["model.lin.weight"][0, 0] = float("nan")
        expected = "weights are not finite"
    else:
        ckpt["hyper_parameters"]["fit_intercept"] = False  # the bias stays
        expected = "fit_intercept False, so averaged.module.lin.bias should be absent"
    torch.save(ckpt, workdir / "edited.ckpt")
    for command in ("validate", "predict"):
        assert cli(command, "--ckpt_path", "edited.ckpt", "--data.path", "t.csv") == 1
        assert expected in error_line(capsys)


def test_validate_refuses_overflowing_predictions(cli, workdir, trained, capsys) -> None:
    pd.DataFrame({"a": [3e38, 1.0], "b": [1.0, 2.0], "y": [1.0, 2.0]}).to_csv(workdir / "big.csv", index=False)
    for command, stage in (("validate", "val"), ("test", "test")):
        assert cli(command, "--ckpt_path", str(trained), "--data.path", "big.csv") == 1
        assert f"predictions on the {stage} rows are not finite" in error_line(capsys)


def test_duplicate_csv_header_is_refused(cli, workdir, capsys) -> None:
    (workdir / "dup.csv").write_text("x,x,y\n1,2,3\n2,3,4\n3,5,6\n4,1,2\n")
    assert cli("fit", "--data.path", "dup.csv") == 1
    assert "dup.csv: duplicate column names ['x']" in error_line(capsys)
    assert not (workdir / "lightning_logs").exists()
