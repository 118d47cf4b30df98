"""Which coefficients the rows cannot tell apart: the rank of R's feature block."""

from __future__ import annotations

import numpy as np

EPS = float(np.finfo(np.float64).eps)


def null_space(design: np.ndarray, o: int, n: int) -> tuple[np.ndarray | None, list[int], np.ndarray]:
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
