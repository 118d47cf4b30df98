"""Issue 27, the command-line and checkpoint rows: two fits racing for a run folder, signals during
predict and export, symlinked outputs, checkpoints from other versions, ``--ckpt_path`` a folder or
``last`` in another logger's folder, stale temporary files, loggers that cannot be built, and
validate/test leaving no stray folders."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import linreg
from linreg.io import atomic_write, remove_stale
from tests.helpers import ROOT, assert_clean, error_line, last_ckpt

LINREG = [sys.executable, "-m", "linreg.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _write_table(path: Path, rows: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})
    df["y"] = 3 * df["a"] - df["b"] + 1
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def table(workdir: Path) -> Path:
    return _write_table(workdir / "t.csv")


@pytest.fixture
def trained(cli, table: Path, workdir: Path) -> Path:
    assert cli("fit", "--data.path", str(table), "--trainer.max_epochs", "2") == 0
    return last_ckpt(workdir)


# -- row 4: two fits at once in one folder ------------------------------------------------------------


@pytest.mark.slow
def test_two_fits_started_together_get_their_own_run_folders(workdir, table) -> None:
    """Two real processes, held at the worst moment (each has picked its folder, neither has written
    to it): each gets its own version_N, both finish, both checkpoints load."""
    (workdir / "barrier").mkdir()
    command = [*LINREG, "fit", "--data.path", "t.csv", "--trainer.max_epochs", "2"]
    command += ["--trainer.logger", "tests.cli.callbacks.BarrierLogger", "--trainer.logger.save_dir", "."]
    command += ["--trainer.logger.folder", "barrier"]
    procs = [
        subprocess.Popen(command, cwd=workdir, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    versions = sorted(p.name for p in (workdir / "lightning_logs").iterdir())
    assert versions == ["version_0", "version_1"], outs
    for version in versions:
        ckpt = workdir / "lightning_logs" / version / "checkpoints" / "last.ckpt"
        assert torch.load(ckpt, weights_only=True)["state_dict"]["model.lin.weight"].shape == (1, 2)
        assert (workdir / "lightning_logs" / version / "config.yaml").is_file()


# -- row 6: a signal during predict ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, by", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")])
def test_signal_during_predict_stops_at_the_next_batch(workdir, trained, sig, code, by) -> None:
    """A real signal to the predicting process at batch 3 (of 10 batches of 40 rows): it stops before
    batch 3, exits 143/130 with one line, and the previous output is unchanged, no temporary file left."""
    _write_table(workdir / "new.csv", rows=400, seed=1)
    (workdir / "p.csv").write_text("precious\n")
    command = [*LINREG, "predict", "--ckpt_path", str(trained), "--data.path", "new.csv", "--data.batch_size", "40"]
    command += ["--output", "p.csv", "--overwrite", "true"]
    command += ["--trainer.callbacks+=tests.cli.callbacks.SignalAtPredictBatch", "--trainer.callbacks.batch", "3"]
    command += ["--trainer.callbacks.signal", sig]
    proc = subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("linreg: ")]
    assert lines == [f"linreg: stopped by {by} after 120 of 400 rows; no predictions written, p.csv left as it was"]
    assert (workdir / "p.csv").read_text() == "precious\n"
    assert not list(workdir.glob(".p.csv*"))


# -- row 8: --output a symlink loop or a dangling link -------------------------------------------------


def test_output_symlink_loop_or_dangling_link_is_refused(cli, workdir, trained, capsys) -> None:
    (workdir / "loop.csv").symlink_to("loop.csv")
    (workdir / "dangling.csv").symlink_to("missing/p.csv")
    predict = ("predict", "--ckpt_path", str(trained), "--data.path", "t.csv", "--output")
    assert cli(*predict, "loop.csv") == 1
    assert "--output loop.csv is a symbolic link that loops" in error_line(capsys)
    assert cli(*predict, "dangling.csv") == 1
    assert "--output dangling.csv is a symbolic link to missing/p.csv, which does not exist" in error_line(capsys)
    assert os.readlink(workdir / "dangling.csv") == "missing/p.csv"  # the link is left as it was
    assert not list(workdir.glob("*.tmp")) and not list(workdir.glob(".*.tmp"))


# -- row 9: a hyperparameter value this version does not know --------------------------------------


def test_checkpoint_records_linreg_version_and_unknown_values_are_named(cli, workdir, trained, capsys) -> None:
    ckpt = torch.load(trained, weights_only=True)
    written_by = ckpt.get("linreg_version")
    ckpt["hyper_parameters"]["solver"] = "qr"
    ckpt["linreg_version"] = "9.0"
    torch.save(ckpt, workdir / "newer.ckpt")
    assert cli("predict", "--ckpt_path", "newer.ckpt", "--data.path", "t.csv", "--output", "p.csv") == 1
    line = error_line(capsys)
    assert "its hyperparameter solver is 'qr'" in line and f"this linreg ({linreg.__version__})" in line
    assert "it accepts 'sgd', 'lstsq'" in line and "written by linreg 9.0" in line
    assert not (workdir / "p.csv").exists()
    del ckpt["linreg_version"]  # as every checkpoint written before linreg recorded its version
    torch.save(ckpt, workdir / "unknown.ckpt")
    assert cli("validate", "--ckpt_path", "unknown.ckpt", "--data.path", "t.csv") == 1
    assert "written by a linreg that did not record its version" in error_line(capsys)
    assert written_by == linreg.__version__  # checkpoints record it now
    # As the newest of `last`: refused too, not passed over for an older run's model.
    newest = workdir / "lightning_logs" / "version_7" / "checkpoints" / "last.ckpt"
    newest.parent.mkdir(parents=True)
    shutil.copy(workdir / "newer.ckpt", newest)
    assert cli("predict", "--ckpt_path", "last", "--data.path", "t.csv") == 1
    assert "version_7/checkpoints/last.ckpt: its hyperparameter solver is 'qr'" in error_line(capsys)


# -- row 10: Ctrl-C (or SIGTERM) during export -------------------------------------------------------

# A real signal from the exporting process to itself, halfway through writing the temporary file.
_EXPORT_DRIVER = """
import os, signal, sys
from pathlib import Path
real = Path.write_bytes
def write_bytes(self, data):
    if self.name.startswith(".model.pt2."):
        real(self, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), getattr(signal, os.environ["SEND"]))
    return real(self, data)
Path.write_bytes = write_bytes
from linreg.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, by", [("SIGINT", 130, "Ctrl-C"), ("SIGTERM", 143, "SIGTERM")])
def test_signal_during_export_leaves_the_old_file(workdir, trained, sig, code, by) -> None:
    (workdir / "model.pt2").write_bytes(b"the previous export")
    command = [sys.executable, "-c", _EXPORT_DRIVER, "export", "--ckpt_path", str(trained)]
    command += ["--output", "model.pt2", "--overwrite", "true"]
    proc = subprocess.run(command, cwd=workdir, env={**ENV, "SEND": sig}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("linreg: ")]
    assert lines == [f"linreg: export stopped by {by}; model.pt2 left as it was"]
    assert (workdir / "model.pt2").read_bytes() == b"the previous export"
    assert not list(workdir.glob(".model.pt2*"))


# -- row 11: a checkpoint from an older Lightning ------------------------------------------------------


def test_checkpoint_from_an_older_lightning(cli, workdir, trained, capsys) -> None:
    ckpt = torch.load(trained, weights_only=True)
    assert cli("predict", "--ckpt_path", str(trained), "--data.path", "t.csv", "--output", "now.csv") == 0
    del ckpt["pytorch-lightning_version"]
    torch.save(ckpt, workdir / "old.ckpt")
    assert cli("predict", "--ckpt_path", "old.ckpt", "--data.path", "t.csv", "--output", "old.csv") == 0
    assert pd.read_csv(workdir / "old.csv").equals(pd.read_csv(workdir / "now.csv"))
    for key in ("loops", "optimizer_states", "callbacks", "lr_schedulers"):
        del ckpt[key]
    torch.save(ckpt, workdir / "older.ckpt")
    assert cli("validate", "--ckpt_path", "older.ckpt", "--data.path", "t.csv") == 0
    capsys.readouterr()
    assert cli("fit", "--ckpt_path", "older.ckpt", "--data.path", "t.csv", "--trainer.max_epochs", "4") == 1
    line = error_line(capsys)
    assert "older.ckpt holds the weights but not what a fit resumes from (no optimizer_states, loops" in line
    del ckpt["hyper_parameters"]
    torch.save(ckpt, workdir / "bare.ckpt")
    assert cli("predict", "--ckpt_path", "bare.ckpt", "--data.path", "t.csv") == 1
    assert "bare.ckpt: not a linreg checkpoint: no hyper_parameters (the model's settings)" in error_line(capsys)


# -- row 13: --ckpt_path a folder -----------------------------------------------------------------------


def test_ckpt_path_a_folder_lists_the_checkpoints_in_it(cli, workdir, trained, capsys) -> None:
    assert cli("predict", "--ckpt_path", "lightning_logs/", "--data.path", "t.csv") == 1
    line = error_line(capsys)
    assert "--ckpt_path lightning_logs is a folder: name a .ckpt file inside it" in line
    assert f"(found: {trained.relative_to(workdir)})" in line
    many = workdir / "many"
    many.mkdir()
    for i in range(7):
        shutil.copy(trained, many / f"m{i}.ckpt")
    assert cli("validate", "--ckpt_path", "many", "--data.path", "t.csv") == 1
    line = error_line(capsys)
    assert line.count("many/m") == 5 and "and 2 more)" in line
    (workdir / "none").mkdir()
    assert cli("predict", "--ckpt_path", "none", "--data.path", "t.csv") == 1
    assert "(found: none)" in error_line(capsys)


# -- row 14: a stale temporary checkpoint from kill -9 --------------------------------------------------

_KILLED_SAVE = """
import os, signal, sys
from linreg.io import atomic_write
def write(tmp):
    tmp.write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


@pytest.mark.slow
def test_stale_checkpoint_temporary_is_removed_by_the_next_fit(cli, workdir, trained) -> None:
    """A real ``kill -9`` in the middle of saving last.ckpt leaves its temporary file; the resume in
    that run family removes it (and leaves the checkpoint it resumes from whole)."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(trained)], env=ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    stale = list(trained.parent.glob(".last.ckpt.*.tmp"))
    assert len(stale) == 1
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "4", "--ckpt_path", "last") == 0
    assert not stale[0].exists()
    assert_clean(workdir)


def test_a_temporary_file_being_written_is_not_stale(tmp_path: Path) -> None:
    """The lock tells a live writer's temporary file from a dead one's: only the dead one goes."""
    (tmp_path / ".last.ckpt.dead.tmp").write_bytes(b"from a killed run")
    seen = {}

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"new")
        seen["removed"] = remove_stale(tmp_path)
        seen["alive"] = tmp.exists()

    atomic_write(tmp_path / "last.ckpt", write)
    assert seen == {"removed": [tmp_path / ".last.ckpt.dead.tmp"], "alive": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# -- row 15: a logger that cannot be built ------------------------------------------------------------


def test_logger_missing_its_package_is_one_line(cli, workdir, table, capsys) -> None:
    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here: the logger can be built")
    args = ("fit", "--data.path", "t.csv", "--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger")
    assert cli(*args) == 1
    line = error_line(capsys)
    assert "--trainer.logger lightning.pytorch.loggers.MLFlowLogger cannot be built" in line
    assert "needs the package mlflow" in line and "pip install" in line
    assert not (workdir / "lightning_logs").exists() and not (workdir / "mlruns").exists()


# -- row 16: predictions.csv line endings ----------------------------------------------------------------


def test_predictions_csv_has_lf_line_endings_throughout(cli, workdir, trained) -> None:
    assert cli("predict", "--ckpt_path", str(trained), "--data.path", "t.csv", "--output", "p.csv") == 0
    data = (workdir / "p.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 41 and data.startswith(b"y\n")


# -- row 17: --ckpt_path last in the active logger's run family ---------------------------------------


@pytest.mark.slow
def test_ckpt_path_last_is_the_active_loggers_newest(cli, workdir, table, capsys) -> None:
    """./lightning_logs holds another run (newer, on other data); `last` with the logger's save_dir
    `runs` resumes runs/lightning_logs/..., the run family of that logger."""
    ours = ("--trainer.logger.init_args.save_dir", "runs")
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "2", *ours) == 0
    _write_table(workdir / "other.csv", seed=5)
    assert cli("fit", "--data.path", "other.csv", "--trainer.max_epochs", "2") == 0
    capsys.readouterr()
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "3", "--ckpt_path", "last", *ours) == 0
    err = capsys.readouterr().err
    assert "--ckpt_path last: runs/lightning_logs/version_0/checkpoints/last.ckpt" in err
    resumed = workdir / "runs" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["epoch"] == 3
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == ["version_0"]


@pytest.mark.slow
def test_ckpt_path_last_trained_on_other_data_is_refused(cli, workdir, table, capsys) -> None:
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "2") == 0
    _write_table(workdir / "other.csv", seed=5)
    assert cli("fit", "--data.path", "other.csv", "--trainer.max_epochs", "3", "--ckpt_path", "last") == 1
    line = error_line(capsys)
    assert "trained on t.csv, not on this fit's --data.path other.csv" in line and "other data" in line
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == ["version_0"]
    # The same rows under another name are the same data: resumed.
    shutil.copy(table, workdir / "copy.csv")
    assert cli("fit", "--data.path", "copy.csv", "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0


@pytest.mark.slow
def test_resume_takes_the_checkpoints_other_settings_and_names_a_change(cli, workdir, table, capsys) -> None:
    """An omitted --model.l2 is the checkpoint's, not the default 0; a given one that differs is used,
    and named in one note."""
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "2", "--model.l2", "0.1") == 0
    capsys.readouterr()
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    assert "linreg: note:" not in capsys.readouterr().err
    assert torch.load(last_ckpt(workdir), weights_only=True)["hyper_parameters"]["l2"] == 0.1
    args = ("--trainer.max_epochs", "4", "--ckpt_path", "last", "--model.l2", "0.2")
    assert cli("fit", "--data.path", "t.csv", *args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("linreg: note:")]
    assert len(notes) == 1 and "--model.l2 0.2 (the checkpoint: 0.1)" in notes[0]
    assert "this run uses the values given" in notes[0]
    assert torch.load(last_ckpt(workdir), weights_only=True)["hyper_parameters"]["l2"] == 0.2


# -- rows 18, 19: validate and test leave no stray folders --------------------------------------------


@pytest.mark.slow
def test_refused_validate_creates_nothing(cli, workdir, table, capsys) -> None:
    train = workdir / "train"
    train.mkdir()
    os.chdir(train)
    assert cli("fit", "--data.path", str(table), "--trainer.max_epochs", "2") == 0
    ckpt = last_ckpt(train)
    os.chdir(workdir)
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["model.lin.weight"][0, 0] = float("nan")
    torch.save(state, workdir / "nan.ckpt")
    pd.DataFrame({"a": [3e38, 1.0], "b": [1.0, 2.0], "y": [1.0, 2.0]}).to_csv(workdir / "big.csv", index=False)
    before = sorted(train.rglob("*"))
    assert cli("validate", "--ckpt_path", "nan.ckpt", "--data.path", "t.csv") == 1
    assert "weights are not finite" in error_line(capsys)
    for command in ("validate", "test"):
        assert cli(command, "--ckpt_path", str(ckpt), "--data.path", "big.csv") == 1
        assert "are not finite" in error_line(capsys)
    assert not (workdir / "lightning_logs").exists()
    assert sorted(train.rglob("*")) == before


@pytest.mark.slow
def test_plain_validate_and_test_log_into_the_checkpoints_run(cli, workdir, trained, capsys) -> None:
    run = trained.parents[1]
    for command in ("validate", "test"):
        assert cli(command, "--ckpt_path", str(trained), "--data.path", "t.csv") == 0
        assert list((run / command).glob("events.out.tfevents*")), command
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == [run.name]
    # A checkpoint outside any run folder: metrics printed, no folder made.
    shutil.copy(trained, workdir / "model.ckpt")
    assert cli("validate", "--ckpt_path", "model.ckpt", "--data.path", "t.csv") == 0
    assert "val/r2" in capsys.readouterr().out
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == [run.name]
    # Where the user asks for logs, they go there.
    assert cli("test", "--ckpt_path", "model.ckpt", "--data.path", "t.csv", "--trainer.logger", "true") == 0
    assert len(list((workdir / "lightning_logs").iterdir())) == 2
