"""The least-squares optimum of the training rows, in float64, streamed batch by batch and across DDP ranks.

``LeastSquares`` never forms XᵀX: squaring the condition number is what loses every digit on a design
like NIST's Filip. It keeps only the R factor of A = [1, (X − s)/c, (Y − s_y)/c_y] and folds each batch
in with one QR (R ← qr([R; batch]).R, "TSQR"). The shift s and scale c come from the first batch: the
shift removes large column means before they can cancel (the ones column absorbs whatever offset is
left, so it changes the rounding, not the fit); the scale keeps every column near 1. With the targets
inside A, R also carries every residual sum of squares: ‖A·v‖ = ‖R·v‖ for any coefficients v, and at
the optimum target j's is the squared norm of its column of R below the design block. DDP ranks each
hold such an R and combine them exactly (``all_gather``).

Penalties are in the units of the model SGD trains: ``solve(x_scale=s_x, y_scale=s_y)`` says the model
sees z = (x − m_x)/s_x and t = (y − m_y)/s_y, and the objective is nn.MSELoss of t (mean over rows and
targets) + l2·‖W‖² + l1·‖W‖₁ on those coordinates' coefficients, the intercept free. scikit-learn's
estimators fit on the same (standardized) one-target table of n rows map as::

    Ridge(alpha)                 minimizes ‖y − Xw‖² + alpha·‖w‖²                   →  l2 = alpha / n
    Lasso(alpha)                 minimizes ‖y − Xw‖²/(2n) + alpha·‖w‖₁              →  l1 = 2·alpha
    ElasticNet(alpha, l1_ratio)  ‖y − Xw‖²/(2n) + alpha·l1_ratio·‖w‖₁
                                 + ½·alpha·(1 − l1_ratio)·‖w‖²  →  l1 = 2·alpha·l1_ratio, l2 = alpha·(1 − l1_ratio)

With k targets the MSE is also averaged over the targets, so in those formulas n becomes n·k.

``ClosedForm`` is the callback that runs it over a fit's training rows (see its docstring).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from typing_extensions import override

# Rows per QR. The flops do not depend on it, the memory traffic does: on 2,000,000 × 32 float32 rows
# in batches of 65,536, blocks of 8-16 k rows ran in half the time of whole batches (2-core CPU).
CHUNK = 16384
EPS = float(np.finfo(np.float64).eps)


@dataclass
class Optimum:
    """The closed-form fit and how the SGD solution compares with it, on the training rows."""

    coef: Tensor  # k × d, original units
    intercept: Tensor | None  # k; None without an intercept
    mse: float  # training MSE at the optimum, averaged over targets, original units
    sgd_mse: float | None  # the SGD model's training MSE, averaged over targets; None without its predictions
    target_var: float  # mean over targets of the training-target variance
    target_ms: float  # mean over targets of the training-target mean square
    n: int = 0  # training rows
    unique: bool = True  # False when collinear columns leave a family of optima (then coef is the min-norm one)
    collinear: list[str] = field(default_factory=list)  # features that are combinations of the others
    objective: float | None = None  # MSE + penalties in the model's units (= mse when unpenalized and unscaled)
    dropped: list[list[str]] = field(default_factory=list)  # per target: features the lasso set to exactly 0
    inference: list[dict[str, Any]] | None = None  # per target, OLS inference; None when it does not apply
    inference_note: str | None = None  # why inference is None

    @property
    def excess(self) -> float:
        """SGD's MSE above the optimum, relative to the optimum; when the fit is exact, relative to the
        target's variance, or to its mean square when the target is constant."""
        if self.sgd_mse is None or math.isnan(self.sgd_mse):
            return math.nan
        for scale in (self.mse, self.target_var, self.target_ms):
            if scale > 1e-9 * max(self.target_var, self.target_ms, 1e-30):
                return max(self.sgd_mse - self.mse, 0.0) / scale
        # A target that is exactly 0: an SGD error at rounding level is no gap.
        return 0.0 if self.sgd_mse <= max(self.mse, 1e-12) else float("inf")


class LeastSquares:
    """The least-squares (optionally ridge / lasso / elastic-net) optimum from an R factor updated per batch.

    The state is a handful of fixed-shape float64 tensors, so DDP ranks combine with one all_gather
    even when one of them saw no rows.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fit_intercept: bool = True,
        l2: float = 0.0,
        l1: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> None:
        if l1 < 0 or l2 < 0:
            raise ValueError(f"penalties must be ≥ 0, got l1={l1}, l2={l2}")
        self.d, self.k, self.fit_intercept = in_features, out_features, fit_intercept
        self.l1, self.l2 = float(l1), float(l2)
        self.p = in_features + int(fit_intercept)  # design columns, the ones column first
        m = self.p + out_features
        kw: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.R = torch.zeros(m, m, **kw)
        self.shift = torch.zeros(in_features + out_features, **kw)
        self.scale = torch.ones(in_features + out_features, **kw)
        self.sgd_sse = torch.zeros(out_features, **kw)
        self.ymean = torch.zeros(out_features, **kw)  # target mean and sum of squared deviations, merged
        self.ym2 = torch.zeros(out_features, **kw)  # batch by batch as Chan et al. do: no cancellation
        self.rows = 0
        self.pred_rows = 0

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, pred: Tensor | None = None) -> None:
        """Fold one batch into R (x: rows × d, y: rows × k, any float dtype; pred: the SGD model's predictions)."""
        rows = x.shape[0]
        if rows == 0:
            return
        device = self.R.device
        x, y = x.reshape(rows, self.d).to(device), y.reshape(rows, self.k).to(device, torch.float64)
        if self.rows == 0:
            self._start(x.double(), y)
        for i in range(0, rows, CHUNK):
            self._absorb(x[i : i + CHUNK], y[i : i + CHUNK])
        mean = y.mean(0)
        self.ymean, self.ym2 = _merge(self.rows, self.ymean, self.ym2, rows, mean, (y - mean).square().sum(0))
        self.rows += rows
        if pred is not None:
            self.sgd_sse += (pred.reshape(rows, self.k).to(device, torch.float64) - y).square().sum(0)
            self.pred_rows += rows

    def _start(self, x: Tensor, y: Tensor) -> None:
        """Shift and scale from the first batch; without an intercept a shift could not be undone, so none."""
        v = torch.cat([x, y], 1)
        if self.fit_intercept:
            self.shift, scale = v.mean(0), v.std(0, correction=0)
        else:
            scale = v.square().mean(0).sqrt()
        self.scale = torch.where((scale > 0) & scale.isfinite(), scale, torch.ones_like(scale))

    def _absorb(self, x: Tensor, y: Tensor) -> None:
        m, o, d = self.R.shape[0], int(self.fit_intercept), self.d
        # Built transposed: Aᵀ row-major is A column-major, the layout LAPACK factors.
        a = torch.empty(m, m + x.shape[0], dtype=torch.float64, device=self.R.device)
        a[:, :m] = self.R.T
        if o:
            a[0, m:] = 1.0
        a[o : o + d, m:] = x.T  # the float64 conversion happens in this copy
        a[o + d :, m:] = y.T
        a[o:, m:].sub_(self.shift[:, None]).div_(self.scale[:, None])
        self.R = torch.linalg.qr(a.mT, mode="r").R

    def gram(self, x_mean: Tensor, x_scale: Tensor) -> Tensor:
        """AᵀA of the design in the model's coordinates, A = [(x − x_mean)/x_scale, 1] (the ones column
        last, as the bias; none without an intercept), from R, without another pass over the rows: with
        B = [1, (x − shift)/scale] the design R factors, A = B·T for a T that only rescales and shifts."""
        o, d = int(self.fit_intercept), self.d
        design = self.R[: o + d, : o + d]
        mean = x_mean.to(design) if self.fit_intercept else torch.zeros_like(self.shift[:d])
        spread = x_scale.to(design)
        t = torch.zeros(o + d, d + o, dtype=torch.float64, device=design.device)
        columns = torch.arange(d, device=design.device)
        t[o + columns, columns] = self.scale[:d] / spread
        if o:
            t[0, :d] = (self.shift[:d] - mean) / spread
            t[0, d] = 1.0
        rt = design @ t
        return rt.T @ rt

    def state(self) -> Tensor:
        """Everything a rank holds, as one flat float64 tensor of a fixed length (one collective, not seven)."""
        head = torch.tensor([self.rows, self.pred_rows], dtype=torch.float64, device=self.R.device)
        return torch.cat([head, self.shift, self.scale, self.sgd_sse, self.ymean, self.ym2, self.R.flatten()])

    def _unpack(self, flat: Tensor) -> dict[str, Any]:
        sizes = [2, self.d + self.k, self.d + self.k, self.k, self.k, self.k, self.R.numel()]
        head, shift, scale, sgd_sse, ymean, ym2, r = flat.split(sizes)
        return {
            "rows": int(head[0]),
            "pred_rows": int(head[1]),
            "shift": shift,
            "scale": scale,
            "sgd_sse": sgd_sse,
            "ymean": ymean,
            "ym2": ym2,
            "R": r.reshape(self.R.shape),
        }

    def all_gather(self, gather: Callable[[Tensor], Tensor]) -> None:
        """Combine all ranks' rows (gather: Lightning's ``trainer.strategy.all_gather``), on every rank.

        Ranks took their shift and scale from their own first batch. Rank r's columns are
        (x − s_r)/c_r; in the common (s, c) they are ((x − s_r)/c_r)·c_r/c + (s_r − s)/c·1, so
        A = A_r·M with M diagonal c_r/c plus (s_r − s)/c in the ones row, and R_r·M is an exact
        (non-triangular) square root of that rank's share of AᵀA; one QR of the stack makes it triangular.
        """
        gathered = gather(self.state())
        if gathered.ndim == 1:  # a single process: strategies hand the tensor back as it is
            gathered = gathered[None]
        parts = [self._unpack(row.to(self.R.device)) for row in gathered]
        self.rows, self.pred_rows = 0, sum(p["pred_rows"] for p in parts)
        self.sgd_sse = sum((p["sgd_sse"] for p in parts), torch.zeros_like(self.sgd_sse))
        self.ymean, self.ym2 = torch.zeros_like(self.ymean), torch.zeros_like(self.ym2)
        for p in parts:
            self.ymean, self.ym2 = _merge(self.rows, self.ymean, self.ym2, p["rows"], p["ymean"], p["ym2"])
            self.rows += p["rows"]
        parts = [p for p in parts if p["rows"] > 0]  # an empty rank has no shift of its own, and no rows to add
        if not parts:
            return
        self.shift, self.scale = parts[0]["shift"], parts[0]["scale"]
        o = int(self.fit_intercept)
        blocks = []
        for p in parts:
            M = torch.diag(torch.cat([torch.ones_like(self.scale[:o]), p["scale"] / self.scale]))
            if o:
                M[0, 1:] = (p["shift"] - self.shift) / self.scale
            blocks.append(p["R"] @ M)
        self.R = torch.linalg.qr(torch.cat(blocks), mode="r").R

    def solve(
        self, feature_names: list[str] | None = None, x_scale: Tensor | None = None, y_scale: Tensor | None = None
    ) -> Optimum:
        """The optimum, in original units; x_scale (d) / y_scale (k): the model's standardization, the
        coordinates the penalties apply in (None: the original units)."""
        from scipy.linalg import solve_triangular

        if self.rows == 0:
            raise ValueError("no rows to fit")
        d, k, p, o, n = self.d, self.k, self.p, int(self.fit_intercept), self.rows
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(d)]
        if len(names) != d:
            raise ValueError(f"{len(names)} feature names for {d} features")
        R, s_x, s_y, c_x, c_y = self._numpy()
        sx, sy = _scales(x_scale, d), _scales(y_scale, k)
        block, rhs = R[o:p, o:p], R[o:p, p:]  # the features with the ones column projected out
        null, collinear, pinv = _null_space(R[:p, :p], o, n)
        if self.l1 > 0 or self.l2 > 0:
            w = self._penalized(block * (c_x / sx), rhs * (c_y / sy), n)
            gamma = w * (sy / c_y) * (c_x / sx)[:, None]
        elif null is None:
            gamma = solve_triangular(block, rhs)
        else:  # the least-norm coefficients in original units: remove the null-space part there
            gamma = pinv @ rhs
            beta = gamma * c_y / c_x[:, None]
            basis = np.linalg.qr(null / c_x[:, None])[0]
            gamma = (beta - basis @ (basis.T @ beta)) * c_x[:, None] / c_y
        full = np.vstack([(R[0, p:] - R[0, 1:p] @ gamma) / R[0, 0], gamma]) if o else gamma
        coef = (gamma * c_y / c_x[:, None]).T
        intercept = s_y + c_y * full[0] - coef @ s_x if o else None
        rss = _rss(R, full) * c_y**2
        mean, m2 = self.ymean.cpu().numpy(), self.ym2.cpu().numpy()
        tss = m2 if o else m2 + n * mean**2  # without an intercept R² is uncentered, as statsmodels has it
        w = coef * sx / sy[:, None]
        dropped = [[names[i] for i in np.flatnonzero(row == 0)] if self.l1 > 0 else [] for row in w]
        note = None
        if self.l1 > 0 or self.l2 > 0:
            note = "penalized fit: OLS standard errors and p-values do not apply"
        elif null is not None:
            note = f"collinear features {', '.join(names[i] for i in collinear)}: the coefficients are not identified"
        elif n <= p:
            note = f"{n} rows for {p} parameters: no residual degrees of freedom"
        inference = None
        if note is None:
            inference = _inference(R[:p, :p], coef, intercept, rss, tss, n, s_x, c_x, names)
        return Optimum(
            coef=torch.from_numpy(np.ascontiguousarray(coef)),
            intercept=torch.from_numpy(intercept) if intercept is not None else None,
            mse=float(np.mean(rss / n)),
            sgd_mse=float(self.sgd_sse.sum().cpu()) / (n * k) if self.pred_rows == n else None,
            target_var=float(np.mean(m2 / n)),
            target_ms=float(np.mean(m2 / n + mean**2)),
            n=n,
            unique=null is None or self.l2 > 0,
            collinear=[names[i] for i in collinear],
            objective=self._objective(rss, w, sy),
            dropped=dropped,
            inference=inference,
            inference_note=note,
        )

    def objective(
        self, coef: Tensor, intercept: Tensor | None, x_scale: Tensor | None = None, y_scale: Tensor | None = None
    ) -> float:
        """The objective ``solve`` minimizes (same x_scale / y_scale), at other weights in original units:
        the SGD model's, to set against ``Optimum.objective``. Exact from R, without another pass over the rows."""
        if self.rows == 0:
            raise ValueError("no rows to fit")
        R, s_x, s_y, c_x, c_y = self._numpy()
        coef = np.asarray(torch.as_tensor(coef).detach().cpu(), dtype=np.float64).reshape(self.k, self.d)
        gamma = coef.T * c_x[:, None] / c_y
        if self.fit_intercept:
            b0 = np.zeros(self.k) if intercept is None else _scales(intercept, self.k)
            gamma = np.vstack([(b0 - s_y + coef @ s_x) / c_y, gamma])
        elif intercept is not None and bool(torch.as_tensor(intercept).ne(0).any()):
            raise ValueError("an intercept for a fit without one")
        sx, sy = _scales(x_scale, self.d), _scales(y_scale, self.k)
        return self._objective(_rss(R, gamma) * c_y**2, coef * sx / sy[:, None], sy)

    def _objective(self, rss: np.ndarray, w: np.ndarray, sy: np.ndarray) -> float:
        mse = float(np.mean(rss / sy**2)) / self.rows
        return mse + self.l2 * float(np.square(w).sum()) + self.l1 * float(np.abs(w).sum())

    def _numpy(self) -> tuple[np.ndarray, ...]:
        R, shift, scale = (t.cpu().numpy() for t in (self.R, self.shift, self.scale))
        return R, shift[: self.d], shift[self.d :], scale[: self.d], scale[self.d :]

    def _penalized(self, B: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
        """argmin_w ‖Bw − t‖² / (n·k) + l2·‖w‖² + l1·‖w‖₁ per column of t (B: R's feature block in model units)."""
        nk, q = n * self.k, B.shape[1]
        if self.l1 == 0:  # ridge exactly: least squares of B stacked over √(n·k·l2)·I
            a = np.vstack([B, math.sqrt(nk * self.l2) * np.eye(q)])
            return np.linalg.lstsq(a, np.vstack([t, np.zeros((q, t.shape[1]))]), rcond=None)[0]
        G, b = B.T @ B, B.T @ t
        cols = [
            _elastic_net(G, b[:, j], nk * self.l1 / 2, nk * self.l2, float(np.linalg.norm(t[:, j])))
            for j in range(t.shape[1])
        ]
        return np.stack(cols, axis=1)


def _merge(n_a: int, mean_a: Tensor, m2_a: Tensor, n_b: int, mean_b: Tensor, m2_b: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and sum of squared deviations of two sets of rows from each set's own (Chan, Golub, LeVeque)."""
    n = n_a + n_b
    if n == 0:
        return mean_a, m2_a
    delta = mean_b - mean_a
    return mean_a + delta * (n_b / n), m2_a + m2_b + delta.square() * (n_a * n_b / n)


def _scales(v: Tensor | Any | None, size: int) -> np.ndarray:
    if v is None:
        return np.ones(size)
    return np.asarray(torch.as_tensor(v).detach().cpu(), dtype=np.float64).reshape(size)


def _rss(R: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Residual sums of squares (R's units) of design coefficients ``full`` (p × k): A·[−full; I] = R·[−full; I]."""
    p = full.shape[0]
    return np.square(R[:, :p] @ full - R[:, p:]).sum(0)


def _null_space(design: np.ndarray, o: int, n: int) -> tuple[np.ndarray | None, list[int], np.ndarray]:
    """Directions of the coefficients the rows cannot tell apart, the columns to blame, and a pseudo-inverse.

    The rank comes from the singular values of R's feature block (the ones column projected out: o
    rows and columns) with the columns scaled by their norms before that projection, and the cutoff
    numpy's lstsq uses: a column's units cannot make it look collinear, a constant column (what is
    left of it after the shift is rounding) is seen as one with the ones column, and a design as
    ill-conditioned as Filip's, but not singular, keeps all its directions. The columns named are
    the ones closest to the span of the columns before them (R's diagonal against the column's
    norm), so of two copies of a column the later one is named.
    """
    block = design[o:, o:]
    q = block.shape[1]
    norms = np.linalg.norm(design[:, o:], axis=0)
    e = 1.0 / np.where(norms > 0, norms, 1.0)
    u, sv, vt = np.linalg.svd(block * e)
    rank = int((sv > max(n, q) * EPS * sv[0]).sum()) if q and sv[0] > 0 else 0
    pinv = (e[:, None] * vt[:rank].T / sv[:rank]) @ u[:, :rank].T  # a least-squares solution, not the least-norm one
    if rank == q:
        return None, [], pinv
    blame = np.argsort(np.abs(np.diag(block)) * e, kind="stable")[: q - rank]
    return e[:, None] * vt[rank:].T, sorted(int(i) for i in blame), pinv


def _elastic_net(G: np.ndarray, b: np.ndarray, l1: float, l2: float, size: float) -> np.ndarray:
    """argmin ½·wᵀ(G + l2·I)w − bᵀw + l1·‖w‖₁ by cyclic coordinate descent with covariance updates.

    Descent finds the active set and the signs; the optimum on it is then solved exactly and kept
    when it satisfies the optimality conditions, so the answer does not hang on a stopping tolerance.
    ``size``: the norm of the target, the yardstick of a negligible step.
    """
    q = b.size
    w, grad, diag = np.zeros(q), b.copy(), np.diag(G).copy()  # grad = b − G·w
    tol = 1e-8
    for _ in range(100_000):
        largest = 0.0
        for i in range(q):
            if diag[i] + l2 <= 0:
                continue
            rho = grad[i] + diag[i] * w[i]
            new = math.copysign(max(abs(rho) - l1, 0.0), rho) / (diag[i] + l2)
            if new != w[i]:
                grad -= G[:, i] * (new - w[i])
                largest = max(largest, abs(new - w[i]) * math.sqrt(diag[i] + l2))
                w[i] = new
        if largest <= tol * size:
            exact = _exact_on_support(G, b, w, l1, l2)
            if exact is not None:
                return exact
            if tol < 1e-15:
                return w
            tol /= 100
    return w


def _exact_on_support(G: np.ndarray, b: np.ndarray, w: np.ndarray, l1: float, l2: float) -> np.ndarray | None:
    active = w != 0
    sign = np.sign(w[active])
    exact = np.zeros_like(w)
    if active.any():
        a = G[np.ix_(active, active)] + l2 * np.eye(int(active.sum()))
        exact[active] = np.linalg.lstsq(a, b[active] - l1 * sign, rcond=None)[0]
        if np.any(np.sign(exact[active]) != sign):
            return None
    slack = np.abs(b - G @ exact)[~active]
    return exact if np.all(slack <= l1 * (1 + 1e-9) + 1e-12 * np.abs(b).max()) else None


def _inference(
    design: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray | None,
    rss: np.ndarray,
    tss: np.ndarray,
    n: int,
    s_x: np.ndarray,
    c_x: np.ndarray,
    names: list[str],
) -> list[dict[str, Any]]:
    """OLS inference per target, as statsmodels reports it.

    Cov(β) = σ²·(AᵀA)⁻¹ = σ²·R⁻¹R⁻ᵀ in R's coordinates; T maps those coordinates to the original
    units (feature i: 1/c_i; the intercept: 1 and −s_i/c_i, undoing the shift), so a coefficient's
    standard error is σ times the norm of its row of T·R⁻¹. Target scales factor out of σ.
    """
    from scipy.linalg import solve_triangular
    from scipy.stats import t as student

    p, o = design.shape[0], int(intercept is not None)
    T = np.diag(np.concatenate([np.ones(o), 1.0 / c_x]))
    if o:
        T[0, 1:] = -s_x / c_x
    unit_se = np.linalg.norm(T @ solve_triangular(design, np.eye(p)), axis=1)
    df = n - p
    quantile = float(student.ppf(0.975, df))
    out = []
    for j in range(coef.shape[0]):
        sigma = math.sqrt(rss[j] / df)
        params = np.concatenate([intercept[j : j + 1], coef[j]]) if o else coef[j]
        se = sigma * unit_se
        with np.errstate(divide="ignore", invalid="ignore"):
            t = params / se
            r2 = 1.0 - rss[j] / tss[j]
        pvalues = 2.0 * student.sf(np.abs(t), df)
        rows = [
            {
                "se": float(se_i),
                "t": float(t_i),
                "p": float(p_i),
                "ci_low": float(v - quantile * se_i),
                "ci_high": float(v + quantile * se_i),
            }
            for v, se_i, t_i, p_i in zip(params, se, t, pvalues)
        ]
        out.append(
            {
                "coef": dict(zip(names, rows[o:])),
                "intercept": rows[0] if o else None,
                "sigma": sigma,
                "r2": float(r2),
                "r2_adj": float(1.0 - (n - o) / df * (1.0 - r2)),
                "df_resid": df,
            }
        )
    return out


class ClosedForm(L.Callback):
    """The least-squares side of a fit: the exact optimum, measured before training and compared after.

    Before the first update, one pass over the training rows (as the file holds them, in float64)
    gives the least-squares solution and the curvature of the training loss. From them: the automatic
    step and momentum (``--model.lr auto``), the gap to the optimum after every epoch and the stopping
    rule (``--model.tol``), and, with ``--model.solver lstsq``, the model's weights themselves. After
    training the same R factor measures the trained model against the optimum, with no second pass.

    A callback rather than module code: the module holds the steps, the metrics and the optimizer;
    this is a measurement of the fit, like the figures.
    """

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = pl_module.hparams
        device = pl_module.device
        ls = LeastSquares(hp.in_features, hp.out_features, hp.fit_intercept, hp.l2, hp.l1, device=device)
        for view in _exact_views(trainer):
            ls.update(view["x"].to(device), view["y"].to(device))
        if trainer.world_size > 1:
            ls.all_gather(trainer.strategy.all_gather)
        self.least_squares = ls
        optimum = ls.solve(hp.feature_names, *self._scales(pl_module))
        pl_module.optimum = optimum
        if hp.solver == "lstsq":
            pl_module.set_coefficients(optimum.coef, optimum.intercept)
        n = optimum.n
        # The Hessian of nn.MSELoss (a mean over rows and targets) in the model's own coordinates.
        standardized = hp.standardize
        x_mean = pl_module.x_mean.double() if standardized else torch.zeros(hp.in_features, dtype=torch.float64)
        x_scale = pl_module.x_scale.double() if standardized else torch.ones(hp.in_features, dtype=torch.float64)
        gram = ls.gram(x_mean, x_scale)
        hessian = gram * (2.0 / (n * hp.out_features))
        hessian.diagonal()[: hp.in_features] += 2.0 * hp.l2  # the ridge penalty's curvature (not the intercept's)
        eig = torch.linalg.eigvalsh(hessian)
        big = float(eig[-1])
        small = float(eig[eig > big * 1e-12][0]) if big > 0 else 0.0  # exactly collinear directions don't count
        pl_module.curvature = (big, small)
        r2 = float(torch.diagonal(gram).sum()) * 2.0 / (n * hp.out_features)  # mean squared row norm of the Hessian
        batch = trainer.datamodule.hparams.get("batch_size") if trainer.datamodule is not None else None
        minibatch = batch is not None and batch < n
        lr, momentum = auto_step(big, small, hp.lr, hp.momentum, batch if minibatch else None, r2)
        for group in pl_module.optimizers().param_groups:
            group["lr"], group["momentum"] = lr, momentum
        bias = pl_module.model.lin.bias
        if hp.solver == "sgd" and hp.lr == "auto" and hp.standardize and bias is not None and not trainer.ckpt_path:
            # Standardized features are centred, so the optimal intercept is the target's mean (0 for a
            # standardized target): starting there skips part of the descent (Longley: 466 epochs to a
            # 1e-4 gap from the random start, 388 from here).
            with torch.no_grad():
                bias.copy_(torch.zeros_like(bias) if hp.standardize_target else pl_module.y_center.to(bias))
        average = hp.average if hp.average != "auto" else minibatch and hp.lr == "auto"
        if average and hp.solver == "sgd" and pl_module.averaged is not None:
            pl_module.average_from = (trainer.max_epochs or 0) // 2 if (trainer.max_epochs or -1) > 0 else 0
        saved, pl_module.resumed_averaging = pl_module.resumed_averaging, None
        if saved and hp.solver == "sgd":  # a resumed fit: averaging as it was, SGD from its last iterate
            pl_module.average_from = saved["from"]
            if saved["iterate"] is not None:
                pl_module.model.load_state_dict(saved["iterate"])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The gap to the optimum of the weights the fit would end with now, exactly (from the R factor,
        no pass over the rows), and the stopping rule: within ``--model.tol``, more epochs change nothing."""
        if pl_module.hparams.solver != "sgd" or pl_module.optimum is None:
            return
        excess = self._measure(pl_module, *pl_module.current_coefficients()).excess
        pl_module.publish({"optimum/excess": excess})
        if excess <= pl_module.tolerance and trainer.current_epoch + 1 >= (trainer.min_epochs or 0):
            trainer.should_stop = True

    def _measure(self, pl_module: L.LightningModule, coef: Tensor, intercept: Tensor | None) -> Optimum:
        """The optimum, with these coefficients' training MSE as the compared model's. With penalties,
        both ``mse`` fields hold the penalized objective instead (in the model's units): that is what
        the fit minimizes, and what its gap to the optimum means."""
        ls, optimum, hp = self.least_squares, pl_module.optimum, pl_module.hparams
        intercept = intercept if hp.fit_intercept else None
        if hp.l1 or hp.l2:
            sgd = ls.objective(coef, intercept, *self._scales(pl_module))
            return dataclasses.replace(optimum, mse=optimum.objective, sgd_mse=sgd)
        return dataclasses.replace(optimum, sgd_mse=ls.objective(coef, intercept))

    @staticmethod
    def _scales(pl_module: L.LightningModule) -> tuple[Tensor | None, Tensor | None]:
        """The model's coordinates, for the objective: standardized features and targets, or raw units."""
        hp = pl_module.hparams
        x_scale = pl_module.x_scale.double().cpu() if hp.standardize else None
        y_scale = pl_module.y_scale.double().cpu() if hp.standardize_target else None
        return x_scale, y_scale

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """End with the averaged iterate if averaging, then measure the model against the optimum.

        The R factor of the start's pass gives any coefficients' training MSE exactly (‖R·v‖²/n), so
        this needs no second pass over the rows."""
        pl_module.end_with_average()
        if getattr(self, "least_squares", None) is None or pl_module.optimum is None:
            return
        pl_module.optimum = optimum = self._measure(pl_module, *pl_module.coefficients())
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"optimum/mse": optimum.mse, "optimum/excess_mse": optimum.excess}, step=trainer.global_step
            )
            _log_hparams_metric(trainer, pl_module)


SAFETY = 1.2  # the automatic step is tuned for a largest eigenvalue this much larger than measured


def auto_step(
    big: float, small: float, lr: float | str, momentum: float | str, batch: int | None, r2: float
) -> tuple[float, float]:
    """The SGD step and momentum for a quadratic loss whose Hessian has eigenvalues in [small, big].

    Full batch, both ``auto``: the heavy-ball optimum (Polyak), step 4/(√L+√μ)² and momentum
    ((√κ−1)/(√κ+1))², whose error shrinks by about 1 − 2/√κ per epoch. A given momentum β gets the
    largest step of that optimal range that is safely stable, min((1−√β)²/μ, (1+β)/L). Mini-batches
    add noise: the effective step lr/(1−β) is also held below 1/L and batch/R² (R² the mean squared
    row norm of the Hessian), where constant-step SGD with averaging converges (Bach & Moulines 2013).
    A given lr always wins, with momentum 0 when that is ``auto``.
    """
    if lr != "auto":
        return float(lr), 0.0 if momentum == "auto" else float(momentum)
    if big <= 0:
        return 1.0, 0.0 if momentum == "auto" else float(momentum)
    # Polyak's pair sits within a factor 1 + 1/κ of instability at the top of the spectrum: float32
    # rounding alone tips an ill-conditioned problem over. Tuning for a spectrum 20% wider keeps a margin.
    big *= SAFETY
    small = min(small if small > 0 else big, big)
    if momentum == "auto":
        root = math.sqrt(big / small)
        beta = ((root - 1) / (root + 1)) ** 2
        step = 4.0 / (math.sqrt(big) + math.sqrt(small)) ** 2
    else:
        beta = float(momentum)
        step = min((1 - math.sqrt(beta)) ** 2 / small, (1 + beta) / big)
    if batch is not None:
        step = min(step / (1 - beta), 1.0 / big, batch / r2) * (1 - beta)
    return step, beta


def _exact_views(trainer: L.Trainer) -> Any:
    """The training rows as the file holds them (float64 for text tables), this rank's share, in order."""
    data = trainer.datamodule
    if hasattr(data, "exact_batches"):
        batches = data.exact_batches()
        return batches.batches() if batches else []
    loader = trainer.train_dataloader
    return loader.batches() if loader is not None else []


def _log_hparams_metric(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Give TensorBoard's hparams view the real result: val MSE, or train MSE without validation data."""
    metrics = pl_module.latest
    name = "val/mse" if "val/mse" in metrics else "train/mse"
    if name not in metrics or not isinstance(trainer.logger, TensorBoardLogger):  # others take no metrics
        return
    datamodule = trainer.datamodule
    params: dict[str, Any] = {**(datamodule.hparams if datamodule is not None else {}), **pl_module.hparams}
    params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    metric = {f"hp/{name.split('/')[0]}_mse": float(metrics[name])}
    trainer.logger.log_hyperparams(params, metric, step=trainer.global_step)
