"""What a user sees in TensorBoard: the event file read back, and a real TensorBoard server asked over HTTP.

The server test starts ``tensorboard`` on a free loopback port, polls its data API under one deadline
and always stops the process by its PID, so a failure never leaves a server behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import linreg.training.checkpointing
import linreg.training.figures
from linreg.data.datamodule import LinRegData
from linreg.training.figures import FitFigures, fit_figures
from linreg.training.module import LinRegModule
from tests.helpers import SEED, last_ckpt, scalars, weights

PNG = b"\x89PNG\r\n\x1a\n"
EPOCHS = 20
DEADLINE_S = 60.0
RUN = "version_0"  # the run's name when TensorBoard's logdir is the lightning_logs folder


@dataclass
class Run:
    version_dir: Path
    ckpt: Path
    global_step: int


def _fit(root: Path, dm: LinRegData) -> Run:
    """A real fit through the Python API, with the callbacks the CLI will register."""
    torch.manual_seed(0)
    model = LinRegModule(
        in_features=dm.in_features,
        out_features=dm.out_features,
        lr=0.01,  # the tutorial's step, not the automatic one
        momentum=0.0,
        feature_names=dm.feature_names,
        target_names=dm.target_names,
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=TensorBoardLogger(str(root), default_hp_metric=False),
        callbacks=[linreg.training.checkpointing.CheckpointPolicy(), FitFigures()],
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = Path(trainer.checkpoint_callback.last_model_path)
    return Run(ckpt.parents[1], ckpt, trainer.global_step)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One fit on the tutorial's four points, shared: the tests only read what it wrote."""
    return _fit(tmp_path_factory.mktemp("tutorial"), LinRegData())


def _images(version_dir: Path) -> dict[str, list[Any]]:
    acc = EventAccumulator(str(version_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


# -- the event file, read back --------------------------------------------------------------------


def test_event_file_holds_loss_w_b_and_the_fit_image(tutorial: Run) -> None:
    logged = scalars(tutorial.version_dir)
    assert {"train/loss", "w", "b"} <= set(logged)
    losses = [v for _, v in logged["train/loss"]]
    assert len(losses) == EPOCHS
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    w, b = weights(tutorial.ckpt)
    assert logged["w"][-1][1] == w.item() and logged["b"][-1][1] == b.item()

    images = _images(tutorial.version_dir)
    assert list(images) == ["fit/fit"]
    [image] = images["fit/fit"]
    assert image.step == tutorial.global_step
    assert image.encoded_image_string.startswith(PNG) and image.width > 0 and image.height > 0

    folder = tutorial.ckpt.parent
    assert (folder / "fit.png").read_bytes().startswith(PNG)
    assert not (folder / "pred_vs_actual.png").exists()


def test_several_features_get_pred_vs_actual_and_residuals(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3
    run = _fit(tmp_path, LinRegData.from_tensors(x, y))
    names = ("pred_vs_actual", "residuals")
    assert sorted(_images(run.version_dir)) == [f"fit/{n}" for n in names]
    for name in names:
        assert (run.ckpt.parent / f"{name}.png").read_bytes().startswith(PNG)
    assert not (run.ckpt.parent / "fit.png").exists()


# -- the figures themselves -----------------------------------------------------------------------


def test_one_feature_figure_labels_columns_and_draws_the_model(tmp_path: Path) -> None:
    x = torch.linspace(0, 10, 20_000).reshape(-1, 1)
    pred = 3 * x - 2
    figures = fit_figures(x, pred + torch.randn_like(x), pred, ["size"], ["price"])
    assert list(figures) == ["fit"]
    [ax] = figures["fit"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("size", "price")
    assert ax.collections[0].get_offsets().shape[0] == linreg.training.figures.MAX_POINTS  # subsampled
    line = ax.lines[0]
    assert torch.allclose(torch.as_tensor(line.get_ydata()), 3 * torch.as_tensor(line.get_xdata()) - 2, atol=1e-4)
    assert "price = 3·size − 2" in line.get_label()


def test_several_targets_get_one_labelled_panel_each() -> None:
    x, y = torch.randn(50, 2), torch.randn(50, 2)
    figures = fit_figures(x, y, y + 0.1, ["a", "b"], ["cost", "time"])
    assert list(figures) == ["pred_vs_actual", "residuals"]
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in figures["pred_vs_actual"].axes]
    assert labels == [("actual cost", "predicted cost"), ("actual time", "predicted time")]
    assert [ax.get_xlabel() for ax in figures["residuals"].axes] == ["residual cost", "residual time"]


def test_missing_matplotlib_is_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is absent
    with pytest.warns(UserWarning, match="matplotlib is not installed") as record:
        FitFigures().on_fit_end(SimpleNamespace(is_global_zero=True, fast_dev_run=False), None)
    assert len(record) == 1


def test_a_failing_figure_still_leaves_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(linreg.training.figures, "fit_figures", boom)
    with pytest.warns(UserWarning, match="fit figures skipped: RuntimeError: boom"):
        run = _fit(tmp_path, LinRegData())
    assert run.ckpt.is_file()
    assert not list(run.ckpt.parent.glob("*.png"))


# -- a real TensorBoard server --------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever *_proxy says


def _get(url: str) -> tuple[bytes, str]:
    with _OPENER.open(url, timeout=5) as response:
        return response.read(), response.headers.get_content_type()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _tensorboard(logdir: Path, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A TensorBoard process on loopback, stopped by its PID however the test ends."""
    port = _free_port()
    # --load_fast false: one Python process, no separate Rust data server left to clean up.
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--load_fast", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def _poll(proc: subprocess.Popen, url: str, ready: Callable[[Any], bool], deadline: float, log: Path) -> Any:
    """The JSON at ``url`` once ``ready`` accepts it: the server loads event files in the background."""
    last: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tensorboard exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            last = json.loads(_get(url)[0])
            if ready(last):
                return last
        except (OSError, ValueError) as exc:  # not listening yet, or an error page before the data loads
            last = exc
        time.sleep(0.2)
    pytest.fail(f"{url} not ready within {DEADLINE_S:.0f} s; last answer: {last!r}\n{log.read_text()[-3000:]}")


def test_tensorboard_server_serves_scalars_and_the_fit_image(tutorial: Run, tmp_path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    log = tmp_path / "tensorboard.log"
    with _tensorboard(tutorial.version_dir.parent, log) as (proc, base):
        tags = _poll(proc, f"{base}/data/plugin/scalars/tags", lambda t: "train/loss" in t.get(RUN, {}), deadline, log)
        assert {"train/loss", "w", "b"} <= set(tags[RUN])
        logged = scalars(tutorial.version_dir)
        for tag in ("train/loss", "w", "b"):
            query = urllib.parse.urlencode({"run": RUN, "tag": tag})
            served = json.loads(_get(f"{base}/data/plugin/scalars/scalars?{query}")[0])
            assert [(step, value) for _, step, value in served] == logged[tag]

        images = _poll(proc, f"{base}/data/plugin/images/tags", lambda t: "fit/fit" in t.get(RUN, {}), deadline, log)
        assert images[RUN]["fit/fit"]["samples"] == 1
        query = urllib.parse.urlencode({"run": RUN, "tag": "fit/fit"})
        [entry] = json.loads(_get(f"{base}/data/plugin/images/images?{query}")[0])
        assert entry["step"] == tutorial.global_step
        blob, content_type = _get(f"{base}/data/plugin/images/individualImage?{entry['query']}")
        assert content_type == "image/png" and blob.startswith(PNG)
        assert blob == _images(tutorial.version_dir)["fit/fit"][0].encoded_image_string
    assert proc.returncode is not None  # stopped, not left running


@pytest.mark.slow
def test_cli_fit_logs_hparams_metric_lr_and_figures(cli, workdir) -> None:
    """Through the real CLI: the hparams view gets the real metric (no -1 placeholder), the learning rate
    is a scalar, and the fit figure lands in TensorBoard and beside the checkpoint."""
    assert cli("fit", "--config", SEED) == 0
    ckpt = last_ckpt(workdir)
    tags = scalars(ckpt.parents[1])
    assert "hp_metric" not in tags
    # The saved model's MSE (summary.json), not the last epoch's running mean taken before each update.
    final = json.loads((ckpt.parent / "summary.json").read_text())["metrics"]["train/mse"]
    assert tags["hp/train_mse"][-1][1] == pytest.approx(final, rel=1e-6)
    assert tags["hp/train_mse"][-1][1] != pytest.approx(tags["train/mse"][-1][1], rel=1e-6)
    assert [v for _, v in tags["lr-SGD"]] == pytest.approx([0.01] * 100)
    acc = EventAccumulator(str(ckpt.parents[1]))
    acc.Reload()
    assert "fit/fit" in acc.Tags()["images"]
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams and "_hparams_/experiment" in hparams
    assert (ckpt.parent / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mean", [0.0, 1e9, 1e-7])
def test_figure_tick_labels_never_overlap(mean: float) -> None:
    """Issue 25: a target of 1e9 + a small signal once wrote ten-digit tick labels over each other."""
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(500, 2)))
    y = mean + (1e-3 if mean else 1.0) * torch.from_numpy(rng.normal(size=(500, 1)))
    pred = y + 0.1 * (y - y.mean())
    figures = linreg.training.figures.fit_figures(x, y, pred, ["a", "b"], ["y"], 5000)
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                lo, hi = sorted(axis.get_view_interval())
                shown = [t for t, v in zip(axis.get_ticklabels(), axis.get_majorticklocs()) if lo <= v <= hi]
                boxes = [t.get_window_extent(renderer) for t in shown if t.get_text()]
                assert 2 <= len(boxes) <= 6, (name, len(boxes))
                overlaps = [(a, b) for a, b in zip(boxes, boxes[1:]) if a.overlaps(b)]
                assert not overlaps, f"{name}: tick labels overlap at mean {mean}"


def _hparams(version_dir: Path) -> set[str]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(version_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return set(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)


def test_tensorboard_hparams_are_the_users_flags_and_the_same_for_every_run(cli, workdir) -> None:
    """Issue 25: the hparams view held `_instantiator` and every internal key, and runs of the two solvers
    had different columns; now each run has the user's flags and the saved model's metrics."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": x @ [1.0, 2.0] + rng.normal(size=60)}).to_csv("t.csv", index=False)
    for solver in ("sgd", "lstsq"):
        assert cli("fit", "--data.path", "t.csv", "--model.solver", solver, "--figures.enabled", "false") == 0
    runs = sorted(workdir.glob("lightning_logs/version_*"))
    keys = [_hparams(run) for run in runs]
    expected = {"solver", "lr", "momentum", "l1", "l2", "fit_intercept", "standardize", "batch_size", "precision"}
    assert keys == [expected, expected]
    for run in runs:
        tags = scalars(run)
        assert {"hp/train_mse", "hp/train_r2"} <= tags.keys()


def test_the_progress_bar_shows_the_losses(workdir) -> None:
    """Issue 25: the progress bar showed no loss; it shows the epoch's train loss and the validation loss."""
    data = LinRegData.from_tensors(torch.randn(64, 2), torch.randn(64, 1), val_fraction=0.25)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, default_root_dir=workdir)
    trainer.fit(LinRegModule(2, 1, lr=0.01, standardize=True), datamodule=data)
    assert {"train/loss", "val/loss"} <= trainer.progress_bar_metrics.keys()


def test_a_two_epoch_fit_shows_its_points(cli, workdir) -> None:
    """Issue 25: a 2-epoch fit must not look empty in TensorBoard: every curve has a point per epoch at
    distinct steps, and the fit's figures are there."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 2))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": x @ [1.0, -1.0] + 0.1 * rng.normal(size=40)}).to_csv(
        "t.csv", index=False
    )
    assert cli("fit", "--data.path", "t.csv", "--trainer.max_epochs", "2", "--model.lr", "0.05") == 0
    run = next(workdir.glob("lightning_logs/version_*"))
    tags = scalars(run)
    for tag in ("train/loss", "train/mse", "train/r2", "coef_norm", "lr-SGD", "epoch"):
        steps = [step for step, _ in tags[tag]]
        assert len(steps) == 2 and steps[0] < steps[1], (tag, steps)
    assert {"fit/pred_vs_actual", "fit/residuals"} <= set(_images(run))
