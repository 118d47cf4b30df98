"""The least-squares optimum of the training rows, in float64, streamed batch by batch and across DDP ranks.

``LeastSquares`` never forms XᵀX: squaring the condition number is what loses every digit on a design
like NIST's Filip. It keeps only the R factor of A = [1, (X − s)/c, (Y − s_y)/c_y] and folds each batch
in with one QR (R ← qr([R; batch]).R, "TSQR"). The shift s and scale c come from the first batch: the
shift removes large column means before they can cancel (the ones column absorbs whatever offset is
left, so it changes the rounding, not the fit); the scale keeps every column near 1. With the targets
inside A, R also carries every residual sum of squares: ‖A·v‖ = ‖R·v‖ for any coefficients v, and at
the optimum target j's is the squared norm of its column of R below the design block. DDP ranks each
hold such an R and combine them exactly (``all_gather``).

Sample weights (weighted least squares, statsmodels' ``WLS``): each row of A times √w, so R is the
factor of AᵀWA and every sum of squares read from it is weighted; the means are over the weight
sum W (``weight``) instead of the row count, which stays the observations' count (statsmodels'
``nobs``: rows of weight 0 count, as there, in the degrees of freedom).

Penalties are in the units of the model SGD trains: ``solve(x_scale=s_x, y_scale=s_y)`` says the model
sees z = (x − m_x)/s_x and t = (y − m_y)/s_y, and the objective is nn.MSELoss of t (mean over rows and
targets) + l2·‖W‖² + l1·‖W‖₁ on those coordinates' coefficients, the intercept free (scikit-learn's
Ridge, Lasso and ElasticNet map onto it as docs/numbers.md shows).

``linreg.training.exact.ExactSolution`` runs it over a fit's training rows. Over 300 lines for a reason:
one class, the R factor and everything read from it (solve, objective, polish, the DDP merge).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linreg.lstsq.inference import ols_inference
from linreg.lstsq.optimum import Optimum
from linreg.lstsq.penalties import active_set, elastic_net
from linreg.lstsq.rank import null_space

# Rows per QR. The flops do not depend on it, the memory traffic does: on 2,000,000 × 32 float32 rows
# in batches of 65,536, blocks of 8-16 k rows ran in half the time of whole batches (2-core CPU).
CHUNK = 16384


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
        self.weight = 0.0  # the rows' weight sum: the row count without sample weights

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, pred: Tensor | None = None, w: Tensor | None = None) -> None:
        """Fold one batch into R (x: rows × d, y: rows × k, any float dtype; pred: the SGD model's
        predictions; w: the rows' sample weights, none: 1 each)."""
        rows = x.shape[0]
        if rows == 0:
            return
        device = self.R.device
        x, y = x.reshape(rows, self.d).to(device), y.reshape(rows, self.k).to(device, torch.float64)
        root = None if w is None else w.reshape(rows).to(device, torch.float64).sqrt()
        if self.rows == 0:
            self._start(x.double(), y)
        for i in range(0, rows, CHUNK):
            self._absorb(x[i : i + CHUNK], y[i : i + CHUNK], None if root is None else root[i : i + CHUNK])
        if root is None:
            weight, mean = float(rows), y.mean(0)
            m2 = (y - mean).square().sum(0)
        else:
            ww = root.square()[:, None]
            weight = float(ww.sum())
            mean = (ww * y).sum(0) / weight if weight > 0 else torch.zeros_like(self.ymean)
            m2 = (ww * (y - mean).square()).sum(0)
        self.ymean, self.ym2 = _merge(self.weight, self.ymean, self.ym2, weight, mean, m2)
        self.rows += rows
        self.weight += weight
        if pred is not None:
            sq = (pred.reshape(rows, self.k).to(device, torch.float64) - y).square()
            self.sgd_sse += (sq if root is None else sq * root.square()[:, None]).sum(0)
            self.pred_rows += rows

    def _start(self, x: Tensor, y: Tensor) -> None:
        """Shift and scale from the first batch; without an intercept a shift could not be undone, so none."""
        v = torch.cat([x, y], 1)
        if self.fit_intercept:
            self.shift, scale = v.mean(0), v.std(0, correction=0)
        else:
            scale = v.square().mean(0).sqrt()
        self.scale = torch.where((scale > 0) & scale.isfinite(), scale, torch.ones_like(scale))

    def _absorb(self, x: Tensor, y: Tensor, root: Tensor | None = None) -> None:
        m, o, d = self.R.shape[0], int(self.fit_intercept), self.d
        # Built transposed: Aᵀ row-major is A column-major, the layout LAPACK factors.
        a = torch.empty(m, m + x.shape[0], dtype=torch.float64, device=self.R.device)
        a[:, :m] = self.R.T
        if o:
            a[0, m:] = 1.0
        a[o : o + d, m:] = x.T  # the float64 conversion happens in this copy
        a[o + d :, m:] = y.T
        a[o:, m:].sub_(self.shift[:, None]).div_(self.scale[:, None])
        if root is not None:  # weighted least squares: the row times √w
            a[:, m:].mul_(root)
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
        head = torch.tensor([self.rows, self.pred_rows, self.weight], dtype=torch.float64, device=self.R.device)
        return torch.cat([head, self.shift, self.scale, self.sgd_sse, self.ymean, self.ym2, self.R.flatten()])

    def _unpack(self, flat: Tensor) -> dict[str, Any]:
        sizes = [3, self.d + self.k, self.d + self.k, self.k, self.k, self.k, self.R.numel()]
        head, shift, scale, sgd_sse, ymean, ym2, r = torch.split(flat, sizes)
        return {
            "rows": int(head[0]),
            "pred_rows": int(head[1]),
            "weight": float(head[2]),
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
        self.weight = 0.0
        for p in parts:
            self.ymean, self.ym2 = _merge(self.weight, self.ymean, self.ym2, p["weight"], p["ymean"], p["ym2"])
            self.rows += p["rows"]
            self.weight += p["weight"]
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
        wn = self.weight  # the means' denominator: n without sample weights
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(d)]
        if len(names) != d:
            raise ValueError(f"{len(names)} feature names for {d} features")
        R, s_x, s_y, c_x, c_y = self._numpy()
        sx, sy = _scales(x_scale, d), _scales(y_scale, k)
        block, rhs = R[o:p, o:p], R[o:p, p:]  # the features with the ones column projected out
        null, collinear, pinv = null_space(R[:p, :p], o, n)
        if self.l1 > 0 or self.l2 > 0:
            w = self._penalized(block * (c_x / sx), rhs * (c_y / sy), wn)
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
        tss = m2 if o else m2 + wn * mean**2  # without an intercept R² is uncentered, as statsmodels has it
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
            inference = ols_inference(R[:p, :p], coef, intercept, rss, tss, n, s_x, c_x, names)
        return Optimum(
            coef=torch.from_numpy(np.ascontiguousarray(coef)),
            intercept=torch.from_numpy(intercept) if intercept is not None else None,
            mse=float(np.mean(rss / wn)),
            sgd_mse=float(self.sgd_sse.sum().cpu()) / (wn * k) if self.pred_rows == n else None,
            target_var=float(np.mean(m2 / wn)),
            target_ms=float(np.mean(m2 / wn + mean**2)),
            n=n,
            unique=null is None or self.l2 > 0,
            collinear=[names[i] for i in collinear],
            objective=self._objective(rss, w, sy),
            dropped=dropped,
            inference=inference,
            inference_note=note,
            penalized=bool(self.l1 or self.l2),
        )

    def objective(
        self, coef: Tensor, intercept: Tensor | None, x_scale: Tensor | None = None, y_scale: Tensor | None = None
    ) -> float:
        """The objective ``solve`` minimizes (same x_scale / y_scale), at other weights in original units:
        the SGD model's, to set against ``Optimum.objective``. Exact from R, without another pass over the rows."""
        if self.rows == 0:
            raise ValueError("no rows to fit")
        R, _, _, _, c_y = self._numpy()
        gamma = self.design_coefficients(coef, intercept)
        weights = np.asarray(torch.as_tensor(coef).detach().cpu(), dtype=np.float64).reshape(self.k, self.d)
        sx, sy = _scales(x_scale, self.d), _scales(y_scale, self.k)
        return self._objective(_rss(R, gamma) * c_y**2, weights * sx / sy[:, None], sy)

    def design_coefficients(self, coef: Tensor, intercept: Tensor | None) -> np.ndarray:
        """Coefficients in original units (k × d, k) in R's coordinates (p × k, the ones column first):
        the rows' residuals there are the targets' columns of A minus A's design block times these."""
        _, s_x, s_y, c_x, c_y = self._numpy()
        w = np.asarray(torch.as_tensor(coef).detach().cpu(), dtype=np.float64).reshape(self.k, self.d)
        gamma: np.ndarray = w.T * c_x[:, None] / c_y
        if self.fit_intercept:
            b0 = np.zeros(self.k) if intercept is None else _scales(intercept, self.k)
            return np.vstack([(b0 - s_y + w @ s_x) / c_y, gamma])
        if intercept is not None and bool(torch.as_tensor(intercept).ne(0).any()):
            raise ValueError("an intercept for a fit without one")
        return gamma

    def polish(
        self, coef: Tensor, x_scale: Tensor | None = None, y_scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None] | None:
        """The exact lasso / elastic-net optimum on the support of ``coef`` (original units, k × d), if
        one is there: what proximal SGD approaches and, in float32 with a constant step, stalls short of.

        An active-set method started from SGD's support and signs (``penalties.active_set``). None when
        it does not settle (SGD's weights stay). Returns the coefficients and intercepts."""
        if self.rows == 0 or self.l1 == 0:
            return None
        R, s_x, s_y, c_x, c_y = self._numpy()
        d, o, p = self.d, int(self.fit_intercept), self.p
        sx, sy = _scales(x_scale, d), _scales(y_scale, self.k)
        B, t = R[o:p, o:p] * (c_x / sx), R[o:p, p:] * (c_y / sy)
        G, b = B.T @ B, B.T @ t
        nk = self.weight * self.k
        start = np.asarray(torch.as_tensor(coef).detach().cpu(), dtype=np.float64).reshape(self.k, d) * sx / sy[:, None]
        w = np.zeros((d, self.k))
        for j in range(self.k):
            optimal = active_set(G, b[:, j], np.sign(start[j]), nk * self.l1 / 2, nk * self.l2)
            if optimal is None:
                return None
            w[:, j] = optimal
        gamma = w * (sy / c_y) * (c_x / sx)[:, None]
        full = np.vstack([(R[0, p:] - R[0, 1:p] @ gamma) / R[0, 0], gamma]) if o else gamma
        solved = (gamma * c_y / c_x[:, None]).T
        intercept = s_y + c_y * full[0] - solved @ s_x if o else None
        b0 = None if intercept is None else torch.from_numpy(intercept)
        return torch.from_numpy(np.ascontiguousarray(solved)), b0

    def _objective(self, rss: np.ndarray, w: np.ndarray, sy: np.ndarray) -> float:
        mse = float(np.mean(rss / sy**2)) / self.weight
        return mse + self.l2 * float(np.square(w).sum()) + self.l1 * float(np.abs(w).sum())

    def _numpy(self) -> tuple[np.ndarray, ...]:
        R, shift, scale = (t.cpu().numpy() for t in (self.R, self.shift, self.scale))
        return R, shift[: self.d], shift[self.d :], scale[: self.d], scale[self.d :]

    def _penalized(self, B: np.ndarray, t: np.ndarray, n: float) -> np.ndarray:
        """argmin_w ‖Bw − t‖² / (n·k) + l2·‖w‖² + l1·‖w‖₁ per column of t (B: R's feature block in model
        units; n: the rows' weight sum)."""
        nk, q = n * self.k, B.shape[1]
        if self.l1 == 0:  # ridge exactly: least squares of B stacked over √(n·k·l2)·I
            a = np.vstack([B, math.sqrt(nk * self.l2) * np.eye(q)])
            solution: np.ndarray = np.linalg.lstsq(a, np.vstack([t, np.zeros((q, t.shape[1]))]), rcond=None)[0]
            return solution
        G, b = B.T @ B, B.T @ t
        cols = [
            elastic_net(G, b[:, j], nk * self.l1 / 2, nk * self.l2, float(np.linalg.norm(t[:, j])))
            for j in range(t.shape[1])
        ]
        return np.stack(cols, axis=1)


def _merge(
    n_a: float, mean_a: Tensor, m2_a: Tensor, n_b: float, mean_b: Tensor, m2_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and sum of squared deviations of two sets of rows from each set's own (Chan, Golub, LeVeque);
    n_a, n_b: the sets' weight sums (row counts without sample weights)."""
    n = n_a + n_b
    if n <= 0:
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
    rss: np.ndarray = np.square(R[:, :p] @ full - R[:, p:]).sum(0)
    return rss
