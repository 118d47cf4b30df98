"""Checks shared by tables held whole (``tables``) and streamed ones (``source``): one rule, one message."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linreg.errors import LinRegError


def check_finite(exact: np.ndarray, names: Sequence[str], source: str, offset: int, to_float32: bool) -> None:
    """Name the first NaN, inf (or, when the rows become float32, value beyond float32) by column and 1-based row.

    Shared by tables held whole (``tables``) and streamed ones: one rule, one message."""
    bad = ~np.isfinite(exact)
    if to_float32 and exact.dtype != np.float32:
        bad |= np.abs(np.where(bad, 0, exact)) > np.finfo(np.float32).max
    if not bad.any():  # the usual case; np.nonzero over every chunk was most of a table's check (measured)
        return
    bad_rows, bad_cols = np.nonzero(bad)
    if bad_rows.size:
        r, c = int(bad_rows[0]), int(bad_cols[0])
        shown = exact[r, c]
        what = "too large for float32" if np.isfinite(shown) else str(shown)
        raise LinRegError(f"{source}: column {names[c]!r} row {offset + r + 1} is {what}")


def reason(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
