"""DDP on CPU (gloo, two real processes) gives the numbers of one process: weights, optimum, predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import ROOT, last_ckpt, weights

pytestmark = pytest.mark.slow
DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")


def linreg(cwd: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    """DDP re-launches the command line, so it must run as a real process, not in pytest's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "linreg.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == status, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def fit_both(tmp_path: Path, cli, rows: int, *args: str) -> tuple[Path, Path]:
    """The one-process fit runs in pytest's process (cheap); the DDP fit as two real processes."""
    rng = np.random.default_rng(rows)
    X = rng.normal(size=(rows, 2))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": X @ [1.5, -2.0] + 0.3 + 0.1 * rng.normal(size=rows)}).to_csv(
        tmp_path / "t.csv", index=False
    )
    common = ("fit", "--data.path", str(tmp_path / "t.csv"), "--trainer.max_epochs", "20", *args)
    assert cli(*common) == 0  # the cli fixture works in tmp_path
    (tmp_path / "ddp").mkdir()
    linreg(tmp_path / "ddp", *common, *DDP)
    return last_ckpt(tmp_path), last_ckpt(tmp_path / "ddp")


def assert_same_fit(one: Path, ddp: Path) -> None:
    (w1, b1), (w2, b2) = weights(one), weights(ddp)
    diff = max((w1 - w2).abs().max().item(), (b1 - b2).abs().max().item())
    print(f"max |Δ| one process vs DDP: {diff:.3g}")
    assert diff <= 1e-6
    s1, s2 = (json.loads((p.parent / "summary.json").read_text()) for p in (one, ddp))
    assert s1["steps"] == s2["steps"]
    assert s2["optimum"]["mse"] == pytest.approx(s1["optimum"]["mse"], rel=1e-9)  # all-reduced normal equations


def test_ddp_even_rows_no_shuffle_equals_one_process(tmp_path: Path, cli) -> None:
    assert_same_fit(*fit_both(tmp_path, cli, 8, "--data.batch_size", "4", "--data.shuffle", "none"))


def test_ddp_uneven_rows_shuffled_counts_each_row_once(tmp_path: Path, cli) -> None:
    """7 rows, batches of 3: ranks split every global batch (2+1, 2+1, 1+0) and scale their summed loss, so no
    row is padded or repeated and the DDP gradient is the one-process gradient."""
    one, ddp = fit_both(tmp_path, cli, 7, "--data.batch_size", "3", "--data.shuffle", "blocks")
    assert_same_fit(one, ddp)
    (tmp_path / "new.csv").write_text(pd.read_csv(tmp_path / "t.csv").drop(columns="y").to_csv(index=False))
    linreg(
        tmp_path / "ddp",
        "predict",
        "--ckpt_path",
        str(ddp),
        "--data.path",
        "../new.csv",
        "--data.batch_size",
        "2",
        "--output",
        "p.csv",
        *DDP,
    )
    got = pd.read_csv(tmp_path / "ddp" / "p.csv")
    from linreg.training.module import LinRegModule

    model = LinRegModule.load_from_checkpoint(ddp)
    with torch.no_grad():
        expected = model(torch.tensor(pd.read_csv(tmp_path / "new.csv").to_numpy(), dtype=torch.float32))
    assert len(got) == 7 and np.allclose(got["y"].to_numpy(), expected[:, 0].numpy(), atol=1e-6)
    assert not list((tmp_path / "ddp").glob("*.tmp")) and not list((tmp_path / "ddp").glob(".p.csv*"))


RSS_SCRIPT = """
import sys
from linreg.cli import main

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

base = rss("VmRSS:")
main(sys.argv[1:])
print(f"RSS base={base} peak={rss('VmHWM:')}")
"""


def test_out_of_core_npy_keeps_memory_bounded(tmp_path: Path) -> None:
    """A 264 MB memory-mapped .npy table trains with resident memory of about a few batches, not the file."""
    n, d = 2_000_000, 32
    names = [f"x{i}" for i in range(d)] + ["y"]
    records = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=[(c, "<f4") for c in names], shape=(n,))
    rng = np.random.default_rng(0)
    w = rng.normal(size=d).astype(np.float32)
    for start in range(0, n, 250_000):
        X = rng.normal(size=(min(250_000, n - start), d)).astype(np.float32)
        flat = records[start : start + len(X)].view(np.float32).reshape(len(X), d + 1)
        flat[:, :d], flat[:, d] = X, X @ w + 0.5
    records.flush()
    del records
    size = (tmp_path / "big.npy").stat().st_size
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RSS_SCRIPT,
            "fit",
            "--data.path",
            "big.npy",
            "--data.batch_size",
            "16384",
            "--trainer.max_epochs",
            "1",
            "--data.standardize",
            "true",
            "--model.lr",
            "0.1",
            "--figures.enabled",
            "false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    base, peak = (int(v.split("=")[1]) for v in done.stdout.split("RSS ")[1].split())
    print(f"file {size / 2**20:.0f} MiB, resident growth during fit {(peak - base) / 2**20:.0f} MiB")
    assert peak - base < size / 3
    summary = json.loads(next(tmp_path.glob("lightning_logs/*/checkpoints/summary.json")).read_text())
    assert summary["optimum"]["excess"] < 0.01 and summary["steps"] == 123


def test_ddp_stopped_mid_epoch_resumes_bit_identical(tmp_path: Path) -> None:
    """SIGTERM reaches rank 0 only, mid-epoch: both ranks stop after the same step, last.ckpt is saved,
    and the resumed two-process fit ends with the weights of a straight one, bit for bit."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 2))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": X @ [1.5, -2.0] + 0.3}).to_csv(tmp_path / "t.csv", index=False)
    common = ("fit", "--data.path", "t.csv", "--data.batch_size", "4", "--data.shuffle", "rows")
    common += ("--data.rows_per_step", "8", "--model.momentum", "0.9", "--trainer.max_epochs", "3", *DDP)
    # 10 updates an epoch, 2 per step: the signal comes before step 14 and both ranks stop after it, at 16
    linreg(tmp_path, *common)
    straight = last_ckpt(tmp_path)
    signal_at = ("--trainer.callbacks+=tests.signals.SignalAt", "--trainer.callbacks.step", "13")
    stopped = linreg(tmp_path, *common, *signal_at, "--trainer.callbacks.signal", "SIGTERM", status=143)
    assert "stopped by SIGTERM at epoch 1, step 16" in stopped.stderr
    assert torch.load(last_ckpt(tmp_path), weights_only=True)["global_step"] == 16
    linreg(tmp_path, *common, "--ckpt_path", "last")
    assert all(torch.equal(a, b) for a, b in zip(weights(straight), weights(last_ckpt(tmp_path)), strict=True))


def _summary(ckpt: Path) -> dict:
    return json.loads((ckpt.parent / "summary.json").read_text())


def _coefficients(summary: dict, part: str) -> np.ndarray:
    solution = summary["targets"]["y"][part]
    return np.array([*solution["coef"].values(), solution["intercept"]])


@pytest.mark.parametrize("penalty", [(), ("--model.l2", "0.01")], ids=["least squares", "ridge"])
def test_ddp_lstsq_in_float64_equals_one_process_and_the_npy_equals_the_csv(tmp_path: Path, cli, penalty) -> None:
    """10,000 x 20 (uneven shares: batches of 3,333 rows): the two ranks' R factors, gathered, give the
    one-process solution; the same rows from a memory-mapped structured .npy give it too."""
    rng = np.random.default_rng(7)
    n, d = 10_000, 20
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 100, size=d) + rng.uniform(-1e3, 1e3, size=d)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    frame["y"] = x @ rng.normal(size=d) + 5.0 + rng.normal(size=n)
    frame.to_csv(tmp_path / "t.csv", index=False, float_format="%.17g")
    records = np.lib.format.open_memmap(
        tmp_path / "t.npy", mode="w+", dtype=[(c, "<f8") for c in frame.columns], shape=(n,)
    )
    for c in frame.columns:
        records[c] = frame[c].to_numpy()
    records.flush()
    del records
    flags = ("--model.solver", "lstsq", "--trainer.precision", "64-true", "--data.batch_size", "3333", *penalty)
    flags += ("--figures.enabled", "false")
    common = ("fit", "--data.path", str(tmp_path / "t.csv"), *flags)
    assert cli(*common) == 0
    one = _summary(last_ckpt(tmp_path))
    (tmp_path / "ddp").mkdir()
    linreg(tmp_path / "ddp", *common, *DDP)
    ddp = _summary(last_ckpt(tmp_path / "ddp"))
    others = [ddp]
    if not penalty:  # the same rows memory-mapped from a structured .npy, in this process
        (tmp_path / "npy").mkdir()
        os.chdir(tmp_path / "npy")
        assert cli("fit", "--data.path", str(tmp_path / "t.npy"), *flags) == 0
        others.append(_summary(last_ckpt(tmp_path / "npy")))
    tol = 1e-10 if penalty else 1e-12
    for part in ("closed_form", "fitted"):
        ref = _coefficients(one, part)
        for other in others:
            diff = np.max(np.abs(_coefficients(other, part) - ref) / np.abs(ref))
            print(f"{penalty or 'least squares'} {part}: max relative difference {diff:.2e}")
            assert diff <= tol


def test_ddp_on_a_three_row_table_runs_the_same_collectives_on_every_rank(tmp_path: Path, cli) -> None:
    """Issue 27 row 5: two processes, three rows (one rank's share of a validation split holds one row,
    where R² is undefined): every rank reduces the same sums, so the fit works and its metrics, from the
    merged rows, equal one process's."""
    pd.DataFrame({"x": [1.0, 2.0, 4.0], "y": [2.1, 3.9, 8.2]}).to_csv(tmp_path / "t.csv", index=False)
    flags = ("--data.path", "t.csv", "--model.lr", "0.05", "--trainer.max_epochs", "5", "--figures.enabled", "false")
    done = linreg(tmp_path, "fit", *flags, *DDP)
    assert "Traceback" not in done.stderr
    ddp = json.loads((last_ckpt(tmp_path).parent / "summary.json").read_text())
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    (one_dir / "t.csv").write_text((tmp_path / "t.csv").read_text())
    linreg(one_dir, "fit", *flags)
    one = json.loads((last_ckpt(one_dir).parent / "summary.json").read_text())
    assert ddp["metrics"].keys() == one["metrics"].keys() and "train/r2" in ddp["metrics"]
    for key, value in one["metrics"].items():
        assert ddp["metrics"][key] == pytest.approx(value, rel=1e-5), key
