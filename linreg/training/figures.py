"""Figures of a fit: what the logged numbers mean, at a glance.

matplotlib is optional (``pip install 'linreg[figures]'``) and imported only when figures are made.
Figures are drawn on an explicit Agg canvas instead of through pyplot, so drawing needs no display,
leaves a notebook's backend alone, and no figure stays registered in pyplot to leak memory.
"""

from __future__ import annotations

import io
import math
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from typing_extensions import override

from linreg.data.tables import default_names
from linreg.io import atomic_write
from linreg.training.checkpointing import fast_dev_run

# A matplotlib Figure. Not imported for type checking either: jsonargparse, which reads this module for
# FitFigures' flags, runs `if TYPE_CHECKING:` blocks, and matplotlib would load on every start.
Figure = Any

MAX_POINTS = 5000  # more points only hide the pattern and slow the drawing
MAX_PANELS = 8  # one panel per target, up to this many
RESERVE = 1 << 16  # bytes a figure leaves free on the disk, for the event file's last writes


def _subsample(tensors: tuple[Tensor, ...], max_points: int) -> tuple[np.ndarray, ...]:
    """The same seeded random rows of each tensor, as float64 n×k arrays: a stride would alias sorted data."""
    n = tensors[0].shape[0]
    idx = None
    if n > max_points:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_points].sort().values
    out = []
    for t in tensors:
        t = t.detach().cpu()
        t = t if idx is None else t[idx]
        out.append(t.double().reshape(t.shape[0], -1).numpy())
    return tuple(out)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panels(k: int, title: str) -> tuple[Figure, list[Any]]:
    """One panel per target: targets have their own units, so they do not share axes."""
    shown = min(k, MAX_PANELS)
    cols = min(shown, 4)
    rows = math.ceil(shown / cols)
    fig = _new_figure(4.5 * cols, 3.8 * rows)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[shown:]:
        ax.set_visible(False)
    fig.suptitle(title if k == shown else f"{title} (first {shown} of {k} targets)")
    return fig, axes[:shown]


def _readable(ax: Any) -> None:
    """At most five ticks an axis, and numbers of any size (1e9 + a small signal, 1e-6) written with an
    offset or a power of ten: long tick labels of a wide-ranged target overlapped on a 4.5-inch panel."""
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=5))
    ax.ticklabel_format(style="sci", scilimits=(-3, 4), useOffset=True)


def _marker_size(n: int) -> tuple[float, float]:
    """Big opaque markers for a handful of rows, small translucent ones for thousands."""
    return (40.0, 1.0) if n <= 200 else (6.0, 0.4)


def _fit(x: np.ndarray, y: np.ndarray, pred: np.ndarray, feature: str, target: str) -> Figure:
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    size, alpha = _marker_size(len(x))
    ax.scatter(x, y, s=size, alpha=alpha, label="data", zorder=2)
    order = np.argsort(x, kind="stable")
    xs, ps = x[order], pred[order]
    label = "fitted line"
    if xs[-1] > xs[0]:  # the model is linear, so its two end points give the equation
        w = (ps[-1] - ps[0]) / (xs[-1] - xs[0])
        b = ps[0] - w * xs[0]
        label = f"fit: {target} = {w:.4g}·{feature} {'+' if b >= 0 else '−'} {abs(b):.4g}"
    ax.plot(xs, ps, color="C1", linewidth=2, label=label, zorder=3)
    ax.set_xlabel(feature)
    ax.set_ylabel(target)
    ax.set_title(f"{target} against {feature}: data and fitted line")
    ax.grid(alpha=0.3)
    ax.legend()
    _readable(ax)
    return fig


def _pred_vs_actual(y: np.ndarray, pred: np.ndarray, targets: list[str]) -> Figure:
    fig, axes = _panels(y.shape[1], "predicted against actual")
    size, alpha = _marker_size(len(y))
    for j, ax in enumerate(axes):
        a, p = y[:, j], pred[:, j]
        lo, hi = min(a.min(), p.min()), max(a.max(), p.max())
        ax.plot([lo, hi], [lo, hi], "--", color="gray", linewidth=1, label="predicted = actual")
        ax.scatter(a, p, s=size, alpha=alpha, zorder=2)
        ax.set_xlabel(f"actual {targets[j]}")
        ax.set_ylabel(f"predicted {targets[j]}")
        ax.set_title(f"{targets[j]}: RMSE {float(np.sqrt(np.mean((a - p) ** 2))):.4g}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        _readable(ax)
    return fig


def _residuals(y: np.ndarray, pred: np.ndarray, targets: list[str]) -> Figure:
    fig, axes = _panels(y.shape[1], "residuals (actual − predicted)")
    bins = int(min(50, max(10, math.sqrt(len(y)))))
    for j, ax in enumerate(axes):
        ax.hist(y[:, j] - pred[:, j], bins=bins, color="C0", edgecolor="white")
        ax.axvline(0.0, color="gray", linestyle="--", linewidth=1, zorder=3)
        ax.set_xlabel(f"residual {targets[j]}")
        ax.set_ylabel("rows")
        ax.grid(alpha=0.3)
        _readable(ax)
    return fig


def fit_figures(
    x: Tensor,
    y: Tensor,
    pred: Tensor,
    feature_names: list[str],
    target_names: list[str],
    max_points: int = MAX_POINTS,
) -> dict[str, Figure]:
    """Named figures of a fit, so a glance shows whether the line is right.

    One feature and one target: ``fit``, the data and the fitted line. Otherwise no plane can be
    drawn, so ``pred_vs_actual`` (points on the diagonal are perfect predictions) and ``residuals``
    (a histogram, centred on 0 for a good fit), one panel per target. At most ``max_points`` rows are
    drawn, the same seeded random subset in every figure.
    """
    x_np, y_np, p_np = _subsample((x, y, pred), max_points)
    if x_np.shape[1] == 1 and y_np.shape[1] == 1:
        return {"fit": _fit(x_np[:, 0], y_np[:, 0], p_np[:, 0], feature_names[0], target_names[0])}
    return {
        "pred_vs_actual": _pred_vs_actual(y_np, p_np, target_names),
        "residuals": _residuals(y_np, p_np, target_names),
    }


def _training_rows(loader: Any, max_points: int) -> tuple[Tensor, Tensor] | None:
    """Training rows until ``max_points`` are in hand: a subset shows the fit as well as all of them."""
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    rows = 0
    for batch in loader.batches() if loader is not None else []:
        xs.append(batch["x"])
        ys.append(batch["y"])
        rows += batch["x"].shape[0]
        if rows >= max_points:
            break
    if rows == 0:
        return None
    return torch.cat(xs), torch.cat(ys)


class FitFigures(L.Callback):
    """At the end of fit, draw the fit into TensorBoard's Images tab and as PNGs beside the checkpoint.

    Drawn at ``on_fit_end``, once the final checkpoint is on disk: on a nearly full disk the model
    comes first (measured: 42 KB of figures written first left no room for a 19 KB checkpoint). A
    failure here never fails the fit: it becomes a warning.

    Args:
        enabled: draw the figures (false: skip them, e.g. for speed on many runs).
        max_points: draw at most this many training rows.
    """

    def __init__(self, enabled: bool = True, max_points: int = MAX_POINTS) -> None:
        super().__init__()
        self.enabled, self.max_points = enabled, max_points

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero or fast_dev_run(trainer):
            return  # a debug run logs and saves nothing (Lightning's rule for fast_dev_run)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            rank_zero_warn("linreg: matplotlib is not installed; no fit figures (pip install 'linreg[figures]')")
            return
        try:
            self._draw(trainer, pl_module)
        except Exception as exc:  # a figure is never worth the checkpoint (see the class docstring)
            rank_zero_warn(f"linreg: fit figures skipped: {type(exc).__name__}: {exc}")

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = _training_rows(trainer.train_dataloader, self.max_points)
        if data is None:
            return
        x, y = data
        with torch.no_grad():
            pred = pl_module(x.to(pl_module.device)).cpu()
        hp = pl_module.hparams
        features = hp.get("feature_names") or default_names("x", x.shape[1])
        targets = hp.get("target_names") or default_names("y", y.shape[1])
        figures = fit_figures(x, y, pred, features, targets, self.max_points)
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)  # a ModelCheckpoint's folder
        folder = Path(dirpath or trainer.log_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")  # rendered once, for the file and for TensorBoard
            png = buffer.getvalue()
            free = shutil.disk_usage(folder).free
            if free < 2 * len(png) + RESERVE:  # the PNG and its copy in the event file; the logs need room too
                rank_zero_warn(f"linreg: fit figure {name} skipped: {free // 1024} KiB free in {folder}")
                continue
            atomic_write(folder / f"{name}.png", partial(_write_bytes, data=png))
            if isinstance(trainer.logger, TensorBoardLogger):
                width, height = (int(v) for v in fig.canvas.get_width_height())
                image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
                summary = Summary(value=[Summary.Value(tag=f"fit/{name}", image=image)])
                trainer.logger.experiment.file_writer.add_summary(summary, trainer.global_step)
        figures.clear()  # pyplot never saw these figures, so dropping them is all the closing they need


def _write_bytes(path: Path, data: bytes) -> int:
    return path.write_bytes(data)
