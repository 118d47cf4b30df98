"""Categorical columns as statsmodels' formulas encode them (``y ~ firm + value``): one indicator per level.

Levels are sorted; with an intercept the first is the reference and gets no indicator (its effect is the
intercept), named ``firm[T.level]``; without one the first categorical column keeps every level, named
``firm[level]``, and the others still drop their reference: patsy's rule, which keeps the design full
rank (every column's indicators sum to one, so two full sets would repeat the intercept they imply).

Pure: no Lightning, no torch. The tables (``tables``, ``source``) call ``Encoding.arrays`` on the
columns they read; the data module finds the levels and keeps them for the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np

from linreg.errors import LinRegError

THOUSANDS = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?")  # "1,234.5": a number, as people write them
MAX_LEVELS = 50  # more distinct values than this in a text column is a name or an id, not a category

Level = str | int | float | bool


def plain(value: Any) -> Level:
    """A numpy or pandas scalar as the Python value a checkpoint and a feature name hold."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value  # type: ignore[no-any-return]


def sorted_levels(values: Iterable[Any]) -> list[Level]:
    """Distinct values in statsmodels' order: numbers numerically, text alphabetically."""
    distinct = {plain(v) for v in values}
    try:
        return sorted(distinct)
    except TypeError:  # text and numbers in one column (a Parquet object column): an order, if not a natural one
        return sorted(distinct, key=lambda v: (type(v).__name__, str(v)))


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value) in ("nan", "<NA>", "NaT")


def find_levels(
    values: np.ndarray, column: str, where: str, limit: int | None = MAX_LEVELS, offset: int = 0
) -> list[Level]:
    """A column's levels, refusing an empty cell (no level to give it) and, with ``limit``, too many levels."""
    import pandas as pd

    series = pd.Series(values)
    empty = series.isna().to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise LinRegError(
            f"{where}: column {column!r} row {offset + row + 1} is empty; a categorical column needs a level "
            "in every row"
        )
    distinct = pd.unique(series)
    if limit is not None and len(distinct) > limit:
        too_many(column, where, distinct[limit], limit)
    return sorted_levels(distinct)


def too_many(column: str, where: str, sample: Any, limit: int) -> None:
    raise LinRegError(
        f"{where}: column {column!r} has more than {limit} distinct values (e.g. {plain(sample)!r}): a name or an "
        f"id rather than a category; leave it out with --data.features, pass it through with --data.id_column "
        f"{column}, or encode it anyway with --data.categorical [{column}]"
    )


def indicator_name(column: str, level: Level, reference: bool) -> str:
    """statsmodels' spelling: ``firm[T.GM]`` beside a reference level, ``firm[GM]`` in a full set."""
    return f"{column}[{'T.' if reference else ''}{level}]"


def _arrow_codes(values: Any, levels: list[Level]) -> np.ndarray | None:
    """Each label's index in ``levels`` (-1 for an unknown or empty one) by pyarrow's hash lookup; None
    when the levels do not convert to the column's Arrow type (then pandas compares them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        found = pc.index_in(values, value_set=pa.array(levels, type=values.type))
    except (pa.ArrowException, TypeError, ValueError):
        return None
    codes: np.ndarray = found.fill_null(-1).to_numpy(zero_copy_only=False)
    return codes


class Encoding:
    """The indicators of a model's categorical columns: each column's levels (all of them, sorted, as the
    training rows held them) and the ones that get an indicator.

    ``levels`` is in feature order: without an intercept its first column is the one that keeps every level.
    """

    def __init__(self, levels: dict[str, list[Level]], intercept: bool) -> None:
        self.levels = {column: list(values) for column, values in levels.items()}
        self.intercept = intercept
        self.kept: dict[str, list[Level]] = {}
        self.names_of: dict[str, list[str]] = {}
        self.column_of: dict[str, tuple[str, int]] = {}  # indicator name -> (column, index of its level)
        full = not intercept
        for column, values in self.levels.items():
            if len(values) < 2:
                raise LinRegError(
                    f"column {column!r} holds a single level {values[0]!r} in the training rows: as a category it "
                    "says nothing; leave it out with --data.features"
                )
            first = 0 if full else 1
            self.kept[column] = values[first:]
            self.names_of[column] = [indicator_name(column, v, not full) for v in values[first:]]
            for i, name in enumerate(self.names_of[column]):
                self.column_of[name] = (column, first + i)
            full = False

    def names(self, columns: Sequence[str]) -> list[str]:
        """The model's feature names: each categorical column replaced, in place, by its indicators."""
        return [name for c in columns for name in self.names_of.get(c, [c])]

    def raw(self, names: Sequence[str]) -> list[str]:
        """The table columns behind feature names (each categorical column once)."""
        return list(dict.fromkeys(self.column_of[n][0] if n in self.column_of else n for n in names))

    def touches(self, names: Sequence[str]) -> bool:
        return any(n in self.column_of for n in names)

    def codes(self, values: Any, column: str, where: str, offset: int | None = 0) -> np.ndarray:
        """Each row's level as its index in the column's levels; an empty cell or a level the training rows
        never held is refused (its indicators would all be 0: the reference level's prediction, silently)."""
        levels = self.levels[column]
        codes = _arrow_codes(values, levels) if hasattr(values, "type") else None
        if codes is None:
            import pandas as pd

            values = values.to_numpy(zero_copy_only=False) if hasattr(values, "type") else values
            codes = np.asarray(pd.Categorical(values, categories=levels).codes)
        bad = codes < 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            at = f" row {offset + row + 1}" if offset is not None else ""
            value = values[row].as_py() if hasattr(values, "type") else values[row]
            if missing(value):
                raise LinRegError(f"{where}: column {column!r}{at} is empty; a categorical column needs a level")
            raise LinRegError(
                f"{where}: column {column!r}{at} holds level {plain(value)!r}, which the training rows never held "
                f"(the model knows {levels}); its effect is unknown"
            )
        return codes

    def arrays(
        self, names: Sequence[str], column: Callable[[str], Any], where: str, offset: int | None = 0
    ) -> list[np.ndarray]:
        """One array per feature name: an indicator (float64 0/1) or the column ``column(name)`` returns."""
        codes: dict[str, np.ndarray] = {}
        out = []
        for name in names:
            if name not in self.column_of:
                out.append(column(name))
                continue
            raw, index = self.column_of[name]
            if raw not in codes:
                codes[raw] = self.codes(column(raw), raw, where, offset)
            out.append((codes[raw] == index).astype(np.float64))
        return out

    def indicators(self, names: Sequence[str]) -> np.ndarray:
        """A mask of the feature names that are indicators: standardization leaves them as they are."""
        return np.array([n in self.column_of for n in names], dtype=bool)


Categorical = Literal["auto", "none"] | list[str] | dict[str, list[Level]]


def refuse_text(where: str, column: str, sample: Any) -> None:
    raise LinRegError(
        f"{where}: column {column!r} is text (e.g. {plain(sample)!r}) and --data.categorical none takes numbers "
        f"only; encode it as indicators with --data.categorical auto (or [{column}]), or leave it out with "
        "--data.features"
    )


def categorical_columns(table: Any, features: Sequence[str], mode: Categorical) -> dict[str, list[Level]]:
    """The categorical columns among ``features`` (a data module's ``Table``) and their levels, in feature
    order: ``auto`` judges each column by its type, a list names them, a mapping gives their levels too."""
    if isinstance(mode, dict):
        return {c: list(mode[c]) for c in features if c in mode}
    if isinstance(mode, list):
        absent = [c for c in mode if c not in features]
        if absent:
            raise LinRegError(
                f"--data.categorical names {absent}, which are not features (the features are {list(features)})"
            )
        return {c: table.levels(c, None) for c in features if c in mode}
    if mode == "none":
        return {}
    levels = {}
    for c in features:
        if c not in table.columns or not table.is_label(c):
            continue
        if not table.is_numeric(c) and table.looks_numeric(c):
            continue  # a number column with bad cells ("1,234"): Table.matrix names the first, by row
        levels[c] = table.levels(c, MAX_LEVELS)
    return levels
