"""Fuzz the table loader: whatever file a user hands over, it either loads or fails with a ``LinRegError``.

Every input goes through what the CLI does before training (``read_table``, then ``LinRegData`` with
``feature_names``, ``check("fit")`` and ``check("predict")``, plus ``Table.matrix`` on each column). A
``LinRegError`` is an accepted outcome; any other exception escapes and fails the test, which is how a raw
pandas/numpy/torch traceback shows up here. When a stage succeeds, its tensors must be finite float32 of
the table's shape.

Examples are derandomized and no example database is kept, so CI sees the same inputs on every run.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, note, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from linreg.data.datamodule import LinRegData
from linreg.data.rows import RecordRows
from linreg.data.tables import TABLE_SUFFIXES, read_table
from linreg.errors import LinRegError


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain phase: its tracing slows shrinking 5x
    )


# -- the property ------------------------------------------------------------------------------


def outcome(what: str) -> None:
    """Count how far inputs get (``--hypothesis-show-statistics``), so a fuzzer that only hits errors shows."""
    if currently_in_test_context():
        event(what)


def as_tensor(rows: torch.Tensor | RecordRows) -> torch.Tensor:
    return rows[0 : len(rows)] if isinstance(rows, RecordRows) else rows


def assert_rows(
    rows: torch.Tensor | RecordRows, n_rows: int, n_cols: int, dtypes: tuple[torch.dtype, ...] = (torch.float32,)
) -> None:
    """What training is handed: finite floats (features float32; targets as the file holds them, which
    the loss casts), one row per table row, one column per name."""
    t = as_tensor(rows)
    assert t.dtype in dtypes, t.dtype
    assert tuple(t.shape) == (n_rows, n_cols), (tuple(t.shape), (n_rows, n_cols))
    assert bool(torch.isfinite(t).all()), t


def run_stage(path: Path, n_rows: int, stage: str) -> None:
    dm = LinRegData(path=str(path))
    try:
        features, targets = dm.feature_names, dm.target_names
        dm.check(stage)
    except LinRegError:
        outcome(f"{stage}: LinRegError")
        return
    outcome(f"{stage}: ok")
    if stage == "fit":
        batches = dm.train_dataloader()
        assert_rows(batches.x, n_rows, len(features))
        assert_rows(batches.y, n_rows, len(targets), (torch.float32, torch.float64))
    else:
        assert_rows(dm.predict_dataloader().x, n_rows, len(features))


def loads_or_refuses(path: Path) -> None:
    """The fuzzed property: each step succeeds (with sane tensors) or raises LinRegError, nothing else."""
    try:
        table = read_table(path)
    except LinRegError:
        outcome("read_table: LinRegError")
        return
    for name in table.columns:
        try:
            table.looks_numeric(name)
            column = table.matrix([name])
        except LinRegError:
            continue
        assert_rows(column, table.n_rows, 1)
    for stage in ("fit", "predict"):
        run_stage(path, table.n_rows, stage)


def in_tmp(suffix: str, write: Callable[[Path], None]) -> None:
    """Write a file with ``write`` in a fresh temporary folder and fuzz it there."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"table{suffix}"
        write(path)
        loads_or_refuses(path)


# -- 1. random bytes, and valid files with bytes flipped or cut off -------------------------------


@cache
def seed_files() -> list[bytes]:
    """One small valid file per format, for the mutation strategy to corrupt."""
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [2.0, 4.0, 6.0]})
    parquet, npz, npy = io.BytesIO(), io.BytesIO(), io.BytesIO()
    frame.to_parquet(parquet)
    np.savez(npz, X=frame[["x"]].to_numpy(), y=frame["y"].to_numpy())
    np.save(npy, frame.to_records(index=False))
    return [frame.to_csv(index=False).encode(), parquet.getvalue(), npz.getvalue(), npy.getvalue()]


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A valid file with up to 4 bytes overwritten and, half the time, cut short: reaches deeper than noise."""
    data = bytearray(draw(st.sampled_from(seed_files())))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


@pytest.mark.slow
@fuzz_settings(max_examples=150)
@given(data=st.one_of(st.binary(max_size=512), corrupted()), suffix=st.sampled_from(TABLE_SUFFIXES))
def test_random_bytes(data: bytes, suffix: str) -> None:
    in_tmp(suffix, lambda p: p.write_bytes(data))


# -- shared: column names, numpy values --------------------------------------------------------

COLUMN_NAMES = st.one_of(st.sampled_from(["y", "x", "", "y.1", "Unnamed: 0"]), st.text(max_size=6))


@st.composite
def column_names(draw: st.DrawFn, unique: bool = False) -> list[str]:
    """1..5 names (unicode, empty, duplicated unless ``unique``), half the time with the target 'y' added."""
    names = draw(st.lists(COLUMN_NAMES, min_size=1, max_size=5, unique=unique))
    if draw(st.booleans()) and "y" not in names:
        names.insert(draw(st.integers(0, len(names))), "y")  # else most files stop at "name the target"
    return names


NUMPY_DTYPES = ["f2", "f4", "f8", "i1", "i8", "u8", "?", "c8", "c16", "U3", "S3", "M8[s]", "m8[s]", "O"]
LIKELY_DTYPES = st.sampled_from([*NUMPY_DTYPES, "f4", "f8", "f8", "i8"]).map(np.dtype)  # numeric more often
OBJECTS = st.one_of(st.none(), st.floats(), st.integers(), st.text(max_size=3))


def numpy_arrays(dtype: np.dtype, shape: int | tuple[int, ...], clean: bool) -> st.SearchStrategy[np.ndarray]:
    """Any values of ``dtype`` (NaN, inf, huge included), or with ``clean`` floats that load."""
    if dtype.hasobject:
        elements = OBJECTS
    elif clean and dtype.kind == "f":
        elements = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    else:
        elements = None
    return hnp.arrays(dtype, shape, elements=elements)


# -- 2. well-formed CSV with random names and cells ----------------------------------------------

CELLS = {
    "float": st.floats().map(repr),  # nan, inf, 1e+308, 5e-324 ...
    "finite": st.floats(-1e6, 1e6).map(repr),
    "int": st.integers(-1000, 1000).map(str),
    "bigint": st.integers(-(2**70), 2**70).map(str),
    "bool": st.sampled_from(["True", "False", "true", "FALSE"]),
    "label": st.from_regex(r"[a-z]{1,5}", fullmatch=True),  # an id/label column, never numeric
    "text": st.text(max_size=6),
}
COLUMN_KINDS = st.sampled_from(["finite", "finite", "finite", "int", "float", "bigint", "bool", "label", "text"])


@st.composite
def csv_tables(draw: st.DrawFn) -> list[list[str]]:
    """A header and 0..50 rows; each column of one kind of cell, a quarter of them with empty and stray cells."""
    names = draw(column_names())
    n_rows = draw(st.integers(0, 50))
    columns = []
    for _ in names:
        usual = CELLS[draw(COLUMN_KINDS)]
        cell = st.one_of(usual, st.just(""), *CELLS.values()) if draw(st.integers(0, 3)) == 0 else usual
        columns.append(draw(st.lists(cell, min_size=n_rows, max_size=n_rows)))
    return [names, *map(list, zip(*columns))]


def write_csv(rows: list[list[str]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)

    return write


@pytest.mark.slow
@fuzz_settings(max_examples=100)
@given(rows=csv_tables())
def test_random_csv(rows: list[list[str]]) -> None:
    in_tmp(".csv", write_csv(rows))


# -- 3. random numpy arrays: .npz with X and y, structured .npy ----------------------------------


@st.composite
def npz_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """X and y (either sometimes missing) of any dtype and 0..3 dims, usually with the same row count."""
    n = draw(st.integers(0, 8))
    clean = draw(st.booleans())
    out = {}
    for key in draw(st.sampled_from([("X", "y"), ("X", "y"), ("X",), ("y",), ("X", "y", "z")])):
        ndim = draw(st.sampled_from([0, 1, 1, 2, 2, 2, 3]))
        first = n if draw(st.integers(0, 3)) else draw(st.integers(0, 8))
        shape = (first, *draw(st.lists(st.integers(0, 4), min_size=2, max_size=2)))[:ndim]
        out[key] = draw(numpy_arrays(draw(LIKELY_DTYPES), shape, clean))
    return out


@pytest.mark.slow
@fuzz_settings(max_examples=100)
@given(arrays=npz_arrays(), compressed=st.booleans())
def test_random_npz(arrays: dict[str, np.ndarray], compressed: bool) -> None:
    save = np.savez_compressed if compressed else np.savez
    in_tmp(".npz", lambda p: save(p, **arrays))  # object arrays are pickled: the loader must refuse them


FIELD_DTYPES = st.one_of(LIKELY_DTYPES, st.just(np.dtype(("f8", (2,)))))


@st.composite
def records(draw: st.DrawFn) -> np.ndarray:
    """A structured array, usually 1-D, with random field names and types; values drawn, clean or raw bytes."""
    names = draw(column_names(unique=True).filter(lambda names: "" not in names))  # numpy renames '' to f0, f1..
    dtype = np.dtype([(name, draw(FIELD_DTYPES)) for name in names])
    shape = draw(st.sampled_from([(), (0,), (1,), (5,), (20,), (20,), (3, 2)]))
    if dtype.hasobject:
        return np.zeros(shape, dtype)
    if draw(st.integers(0, 2)) == 0:
        size = dtype.itemsize * math.prod(shape)
        return np.frombuffer(draw(st.binary(min_size=size, max_size=size)), dtype).reshape(shape).copy()
    array = np.zeros(shape, dtype)
    for name in names:
        field = dtype[name]  # a sub-array field ("f8", (2,)) is drawn as base values of the combined shape
        array[name] = draw(numpy_arrays(field.base, (*shape, *field.shape), draw(st.booleans())))
    return array


@fuzz_settings(max_examples=100)
@given(array=records())
def test_random_structured_npy(array: np.ndarray) -> None:
    in_tmp(".npy", lambda p: np.save(p, array))  # object fields are pickled: the loader must refuse them


# -- 4. random parquet with mixed dtypes ---------------------------------------------------------

INT64S, FLOATS, BOOLS = st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans()
NULLABLE = {  # extension dtypes with missing values, masked and pyarrow-backed; parquet keeps them
    "Int64": st.one_of(st.none(), INT64S),
    "Float64": st.one_of(st.none(), FLOATS),
    "boolean": st.one_of(st.none(), BOOLS),
    "string": st.one_of(st.none(), st.text(max_size=4), FLOATS.map(repr)),
    "int64[pyarrow]": st.one_of(st.none(), INT64S),
    "double[pyarrow]": st.one_of(st.none(), FLOATS),
    "bool[pyarrow]": st.one_of(st.none(), BOOLS),
}
PARQUET_DTYPES = st.sampled_from(
    ["f2", "f4", "f8", "f8", "f8", "i1", "i8", "i8", "u8", "?", "M8[ns]", "m8[ns]", "U3", *NULLABLE, "category"]
)


@st.composite
def parquet_frames(draw: st.DrawFn) -> pd.DataFrame:
    """1..5 uniquely named columns of numpy, nullable, string or categorical dtypes, 0..20 rows."""
    names = draw(column_names(unique=True))
    n = draw(st.integers(0, 20))
    clean = draw(st.booleans())
    columns: dict[str, Any] = {}
    for name in names:
        kind = draw(PARQUET_DTYPES)
        if kind in NULLABLE:
            columns[name] = pd.array(draw(st.lists(NULLABLE[kind], min_size=n, max_size=n)), dtype=kind)
        elif kind == "category":
            values = st.one_of(st.none(), st.text(max_size=3), st.floats(allow_nan=False).map(str))
            columns[name] = pd.Categorical(draw(st.lists(values, min_size=n, max_size=n)))
        else:
            columns[name] = draw(numpy_arrays(np.dtype(kind), n, clean))
    return pd.DataFrame(columns, index=pd.RangeIndex(n))


def write_parquet(frame: pd.DataFrame) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        try:
            frame.to_parquet(path)
        except (pa.ArrowException, ValueError, TypeError, NotImplementedError):
            reject()  # pandas/pyarrow cannot store this frame: not an input a user could hand over

    return write


@pytest.mark.slow
@fuzz_settings(max_examples=100)
@given(frame=parquet_frames())
def test_random_parquet(frame: pd.DataFrame) -> None:
    note(f"dtypes: {frame.dtypes.astype(str).to_dict()}")  # a frame's repr does not show them
    in_tmp(".parquet", write_parquet(frame))


# -- 5. fixed cases: what the fuzzers found, and shapes they must never miss ------------------------

EDGE_CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "csv-header-only": (".csv", write_csv([["x", "y"]])),
    "csv-duplicate-names": (".csv", write_csv([["x", "y", "x"], ["1", "2", "3"]])),  # pandas renames to x.1
    "npz-pickled-y": (".npz", lambda p: np.savez(p, X=np.ones((2, 1)), y=np.array([1, "a"], dtype=object))),
    "npy-no-rows-packed": (".npy", lambda p: np.save(p, np.zeros(0, dtype=[("x", "<f4"), ("y", "<f4")]))),
    "npy-mixed-fields": (".npy", lambda p: np.save(p, np.zeros(3, dtype=[("x", ">f8"), ("b", "?"), ("y", "<f4")]))),
    "parquet-Int64-NA-beside-float": (
        ".parquet",
        lambda p: pd.DataFrame(
            {"x0": [0.0, 1.0], "x1": pd.array([1, None], dtype="Int64"), "y": [0.0, 1.0]}
        ).to_parquet(p),
    ),
    "parquet-boolean-NA": (
        ".parquet",
        lambda p: pd.DataFrame({"x": pd.array([True, None], dtype="boolean"), "y": [0.0, 1.0]}).to_parquet(p),
    ),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case(case: str) -> None:
    suffix, write = EDGE_CASES[case]
    in_tmp(suffix, write)
