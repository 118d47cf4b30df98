"""The files linreg writes, on a real full disk, a real read-only folder, under a real ``kill -9``: one
line for the user, no partial or empty file left, no earlier file damaged, and ``--ckpt_path last``
always lands on a checkpoint that loads."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from linreg.cli.checkpoints import load_checkpoint
from tests.helpers import ROOT, assert_clean, error_line, last_ckpt


def _table(folder: Path, rows: int = 40) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})
    df["y"] = 3 * df["a"] - df["b"] + 1 + 0.01 * rng.normal(size=rows)
    df.to_csv(folder / "t.csv", index=False)
    return folder / "t.csv"


def _mount(*args: str) -> bool:
    """Mount something real (root on Linux); False where this machine does not allow it."""
    if sys.platform != "linux" or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real 200 KiB filesystem as the working folder, holding a small table."""
    folder = tmp_path / "small"
    folder.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); test_full_disk_simulated covers it")
    _table(folder)
    monkeypatch.chdir(folder)
    yield folder
    monkeypatch.chdir(tmp_path)
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real read-only bind mount (root ignores chmod) of a folder holding a table and a trained run."""
    source, folder = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    folder.mkdir()
    _table(source)
    monkeypatch.chdir(source)
    from linreg.cli import main

    main(["fit", "--data.path", "t.csv", "--trainer.max_epochs", "3"])
    if not (_mount("--bind", str(source), str(folder)) and _mount("-o", "remount,ro,bind", str(folder))):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        pytest.skip("cannot make a read-only bind mount here (needs root on Linux)")
    monkeypatch.chdir(folder)
    yield folder
    monkeypatch.chdir(tmp_path)
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _loads(folder: Path) -> list[Path]:
    """Every checkpoint under ``folder``, each of which must load."""
    found = sorted(folder.rglob("*.ckpt"))
    for ckpt in found:
        assert ckpt.stat().st_size > 0, ckpt
        load_checkpoint(ckpt)
    return found


@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_only_whole_files(cli, full_disk, capsys) -> None:
    """Fit on a 200 KiB filesystem with a checkpoint every epoch: the disk fills (event file,
    checkpoints, figures); the fit ends in one line, and what is left loads, whole."""
    args = ("--data.path", "t.csv", "--model.lr", "0.01", "--checkpoint.every_n_epochs", "1")
    assert cli("fit", *args, "--trainer.max_epochs", "1000") == 1
    assert "No space left on device" in error_line(capsys)
    assert_clean(full_disk)
    if _loads(full_disk):  # the run folder is kept only with a checkpoint in it
        assert cli("validate", "--data.path", "t.csv", "--ckpt_path", "last", "--trainer.logger", "false") == 0
        assert "--ckpt_path last: " in capsys.readouterr().err


def test_nearly_full_disk_saves_the_model_before_the_figures(cli, full_disk, capsys) -> None:
    """100 KiB free: the figures (about 42 KB) once took the room the final checkpoint (19 KB)
    needed. The checkpoint is written first now; a figure that does not fit is a warning."""
    subprocess.run(["mount", "-o", "remount,size=100k", str(full_disk)], check=True)
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "5") == 0
    assert _loads(full_disk)
    assert_clean(full_disk)


def test_full_disk_simulated_keeps_the_previous_checkpoint(cli, workdir, capsys, monkeypatch) -> None:
    """Where no small filesystem can be mounted: the disk 'fills' in the middle of the third
    last.ckpt write (half the bytes written, then ENOSPC, as a real full disk does)."""
    _table(workdir)
    real = Path.write_bytes
    saves = []

    def write_bytes(self: Path, data: bytes) -> int:
        if self.name.startswith(".last.ckpt."):
            saves.append(self)
            if len(saves) == 3:
                real(self, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    args = ("--data.path", "t.csv", "--model.lr", "0.01", "--checkpoint.every_n_epochs", "1")
    assert cli("fit", *args, "--trainer.max_epochs", "5") == 1
    assert "last.ckpt: cannot write (No space left on device)" in error_line(capsys)
    assert_clean(workdir)
    ckpt = last_ckpt(workdir)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the second save (0-based epoch 1), whole
    assert cli("validate", "--data.path", "t.csv", "--ckpt_path", "last") == 0


def test_ckpt_path_last_skips_a_broken_newest_checkpoint(cli, workdir, capsys) -> None:
    """A truncated newest last.ckpt (what an older linreg left after a full disk) is skipped, named,
    and the good one before it is taken."""
    _table(workdir)
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "3") == 0
    good = last_ckpt(workdir)
    broken = workdir / "lightning_logs" / "version_9" / "checkpoints" / "last.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(good.read_bytes()[:4096])
    capsys.readouterr()
    assert cli("validate", "--data.path", "t.csv", "--ckpt_path", "last", "--trainer.logger", "false") == 0
    err = capsys.readouterr().err
    assert f"skipped {broken.relative_to(workdir)}" in err and f"--ckpt_path last: {good.relative_to(workdir)}" in err


@pytest.mark.slow
def test_kill_9_never_truncates_last_ckpt(workdir: Path, tmp_path: Path) -> None:
    """``kill -9`` at several moments of a fit saving every epoch, with TMPDIR on another filesystem
    (where Lightning's own save is a copy): every time, last.ckpt is absent or loads."""
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(workdir).st_dev:
        pytest.skip("no second filesystem (/dev/shm) for TMPDIR here")
    tmpdir = Path(os.environ.get("TMPDIR_FOR_TESTS", other)) / f"linreg-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    _table(workdir, rows=2000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}
    command = [sys.executable, "-m", "linreg.cli", "fit", "--data.path", "t.csv", "--model.lr", "0.01"]
    command += ["--model.tol", "0", "--checkpoint.every_n_epochs", "1", "--trainer.max_epochs", "1000000"]
    command += ["--figures.enabled", "false"]
    try:
        for delay in (0.0, 0.13, 0.47):
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 120  # generous: CI machines are shared
                while not list(workdir.glob("lightning_logs/version_*/checkpoints/last.ckpt")):
                    assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
                    time.sleep(0.05)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
            finally:
                proc.kill()
                proc.stderr.close()
            assert _loads(workdir)
            # A kill in the middle of a write can leave its temporary file, never a broken last.ckpt.
            assert all(p.name.startswith(".last.ckpt.") for p in workdir.rglob("*.tmp"))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.parametrize(
    "args, what",
    [
        (("fit", "--data.path", "t.csv"), "linreg fit writes its logs and checkpoints under"),
        (("fit", "--data.path", "t.csv", "--trainer.logger", "false"), "linreg fit writes its logs and checkpoints"),
        (("validate", "--data.path", "t.csv", "--ckpt_path", "last"), "--trainer.logger false"),
        (("predict", "--data.path", "t.csv", "--ckpt_path", "last", "--output", "p.csv"), "--output p.csv"),
    ],
)
def test_read_only_folder_is_refused_before_any_work(cli, read_only, capsys, args, what) -> None:
    before = {p: p.stat().st_mtime_ns for p in read_only.rglob("*")}
    assert cli(*args) == 1
    line = error_line(capsys)
    assert what in line and "Read-only file system" in line
    assert {p: p.stat().st_mtime_ns for p in read_only.rglob("*")} == before


def test_read_only_folder_still_validates_without_a_logger(cli, read_only, capsys) -> None:
    assert cli("validate", "--data.path", "t.csv", "--ckpt_path", "last", "--trainer.logger", "false") == 0
    assert "val/mse" in capsys.readouterr().out


@pytest.fixture
def trained(cli, workdir: Path) -> Path:
    _table(workdir)
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "3") == 0
    return last_ckpt(workdir)


def test_output_that_is_a_folder_or_the_input_is_refused(cli, workdir, trained, capsys) -> None:
    (workdir / "adir.csv").mkdir()
    table = (workdir / "t.csv").read_bytes()
    predict = ("predict", "--ckpt_path", "last", "--overwrite", "true")
    assert cli(*predict, "--data.path", "t.csv", "--output", "adir.csv") == 1
    assert "--output adir.csv is a folder" in error_line(capsys)
    assert cli(*predict, "--data.path", "t.csv", "--output", "./t.csv") == 1
    assert "--output t.csv is the input t.csv" in error_line(capsys)
    parts = workdir / "parts"
    parts.mkdir()
    shutil.copy(workdir / "t.csv", parts / "a.csv")
    assert cli(*predict, "--data.path", "parts", "--output", "parts/p.csv") == 1
    assert "is inside the input folder parts" in error_line(capsys)
    assert (workdir / "t.csv").read_bytes() == table and not (parts / "p.csv").exists()


def test_file_modes_follow_the_umask_and_a_replaced_file_keeps_its_own(cli, workdir, trained) -> None:
    old = os.umask(0o027)
    try:
        assert cli("predict", "--data.path", "t.csv", "--ckpt_path", "last", "--output", "p.csv") == 0
        assert stat.S_IMODE((workdir / "p.csv").stat().st_mode) == 0o640
        summary = trained.parent / "summary.json"
        assert stat.S_IMODE(summary.stat().st_mode) == 0o644  # written under the fixture's umask (022)
        os.chmod(workdir / "p.csv", 0o604)
        args = ("predict", "--data.path", "t.csv", "--ckpt_path", "last", "--output", "p.csv", "--overwrite", "true")
        assert cli(*args) == 0
        assert stat.S_IMODE((workdir / "p.csv").stat().st_mode) == 0o604
    finally:
        os.umask(old)


@pytest.mark.parametrize("keep", [0, 2])
def test_checkpoint_every_epoch_keeps_last_and_at_most_keep_more(cli, workdir, keep) -> None:
    _table(workdir)
    args = ("--data.path", "t.csv", "--model.lr", "0.01", "--trainer.max_epochs", "6")
    assert cli("fit", *args, "--checkpoint.every_n_epochs", "1", "--checkpoint.keep", str(keep)) == 0
    names = sorted(p.name for p in workdir.rglob("*.ckpt"))
    assert names == sorted(["last.ckpt", *(f"epoch={e}-step={e + 1}.ckpt" for e in range(6 - keep, 6))])


def test_every_n_epochs_updates_last_ckpt_during_the_fit(cli, workdir, monkeypatch) -> None:
    """With keep 0, last.ckpt is still rewritten every N epochs (Lightning alone would not: it updates
    last only beside a kept epoch file)."""
    from linreg.training.checkpoint_io import AtomicCheckpointIO

    epochs = []
    real = AtomicCheckpointIO.save_checkpoint

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        epochs.append(checkpoint["epoch"])
        real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_checkpoint)
    _table(workdir)
    args = ("--data.path", "t.csv", "--model.lr", "0.01", "--trainer.max_epochs", "5")
    assert cli("fit", *args, "--checkpoint.every_n_epochs", "2") == 0
    assert epochs == [1, 3, 5]  # after epochs 2 and 4, and at the end


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model.momentum", "-1"), "--model.momentum must be in [0, 1)"),
        (("--model.momentum", "1.5"), "--model.momentum must be in [0, 1)"),
        (("--model.weight_decay", "-0.1"), "--model.weight_decay must be at least 0"),
        (("--trainer.max_epochs", "0"), "--trainer.max_epochs 0 trains nothing"),
        (("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss"), "no validation data"),
        (("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "train/p90"), "can monitor train/loss"),
        (("--checkpoint.keep", "2"), "--checkpoint.keep needs --checkpoint.every_n_epochs"),
        (("--trainer.limit_train_batches", "0"), "--trainer.limit_train_batches 0 trains nothing"),
        (
            ("--data.val_fraction", "0.025", "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor")
            + ("val/r2",),
            "R² needs two validation rows",
        ),
    ],
)
def test_refused_fits_leave_no_run_folder(cli, workdir, capsys, args, message) -> None:
    _table(workdir)
    assert cli("fit", "--data.path", "t.csv", *args) == 1
    assert message in error_line(capsys)
    assert not (workdir / "lightning_logs").exists() or not list((workdir / "lightning_logs").iterdir())


def test_early_stopping_on_a_validation_metric_works(cli, workdir) -> None:
    _table(workdir)
    args = ("--data.path", "t.csv", "--data.val_fraction", "0.25", "--model.lr", "0.01", "--trainer.max_epochs", "50")
    es = ("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/r2", "--trainer.callbacks.mode")
    assert cli("fit", *args, *es, "max", "--trainer.callbacks.patience", "1") == 0
    assert last_ckpt(workdir).exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predictions_onto_a_full_disk_keep_the_old_file(cli, workdir, trained, capsys, suffix) -> None:
    """20,000 predictions do not fit on a 16 KiB filesystem: one line naming the output; the file
    it was to replace is as it was, and no temporary file is left."""
    small = workdir / "small"
    small.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        rng = np.random.default_rng(1)
        pd.DataFrame({"a": rng.normal(size=20_000), "b": rng.normal(size=20_000)}).to_csv("new.csv", index=False)
        output = small / f"p{suffix}"
        output.write_bytes(b"an earlier file")
        args = ("predict", "--ckpt_path", "last", "--data.path", "new.csv", "--output", str(output))
        assert cli(*args, "--overwrite", "true") == 1
        assert f"{output}: cannot write" in error_line(capsys)
        assert output.read_bytes() == b"an earlier file"
        assert sorted(p.name for p in small.iterdir()) == [output.name]
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_refusal_never_removes_a_folder_it_did_not_make(cli, workdir, capsys) -> None:
    """A logger writing straight into the working folder (no name, no version) or into an existing
    folder: a refused run leaves every file there."""
    _table(workdir)
    (workdir / "thesis.tex").write_text("keep me")
    (workdir / "exp").mkdir()
    (workdir / "exp" / "notes.txt").write_text("keep me too")
    refuse = ("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss")
    loggers = [("--trainer.logger.init_args.save_dir", ".", "--trainer.logger.init_args.name", "")]
    loggers[0] += ("--trainer.logger.init_args.version", "")
    loggers += [("--trainer.logger.init_args.save_dir", "exp", "--trainer.logger.init_args.name", "")]
    for logger in loggers:
        assert cli("fit", "--data.path", "t.csv", *logger, *refuse) == 1
        error_line(capsys)
        assert (workdir / "thesis.tex").read_text() == "keep me"
        assert (workdir / "exp" / "notes.txt").read_text() == "keep me too"
        assert (workdir / "t.csv").exists()


def test_monitoring_lightnings_step_keeps_the_latest_checkpoints(cli, workdir) -> None:
    _table(workdir)
    keep = ("--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor", "step", "--trainer.callbacks.mode")
    keep += ("max", "--trainer.callbacks.save_top_k", "2", "--trainer.callbacks.every_n_epochs", "1")
    assert cli("fit", "--data.path", "t.csv", "--model.lr", "0.01", "--trainer.max_epochs", "4", *keep) == 0
    assert len([p for p in workdir.rglob("epoch=*.ckpt")]) == 2


def test_output_matching_the_input_glob_is_refused(cli, workdir, trained, capsys) -> None:
    parts = workdir / "parts"
    parts.mkdir()
    shutil.copy(workdir / "t.csv", parts / "a.csv")
    assert cli("predict", "--ckpt_path", "last", "--data.path", "parts/*.csv", "--output", "parts/p.csv") == 1
    assert "is the input parts/*.csv" in error_line(capsys)
    assert not (parts / "p.csv").exists()


def test_changed_table_at_an_epoch_boundary_warm_starts_with_a_note(cli, workdir, capsys) -> None:
    table = _table(workdir)
    args = ("--data.path", "t.csv", "--model.lr", "0.01")
    assert cli("fit", *args, "--trainer.max_epochs", "3") == 0
    df = pd.read_csv(table)
    pd.concat([df, df]).to_csv(table, index=False)  # more rows of the same kind
    capsys.readouterr()
    assert cli("fit", *args, "--trainer.max_epochs", "5", "--ckpt_path", "last") == 0
    assert "t.csv changed since the checkpoint (size" in capsys.readouterr().err
