"""Categorical columns in the data layer: the indicators equal patsy's design matrix (statsmodels' formulas),
in memory and streamed from CSV and Parquet (dictionary-encoded too), and bad labels are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from linreg.data.categorical import Encoding
from linreg.data.datamodule import LinRegData
from linreg.errors import LinRegError


def grunfeld() -> pd.DataFrame:
    import statsmodels.api as sm

    frame = sm.datasets.grunfeld.load_pandas().data
    return frame.assign(year=frame["year"].astype(int))


def design(frame: pd.DataFrame, formula: str) -> pd.DataFrame:
    """patsy's design matrix (what statsmodels' formulas fit), without the intercept column, named as linreg names."""
    import patsy

    matrix = patsy.dmatrix(formula, frame, return_type="dataframe")
    return matrix.drop(columns="Intercept", errors="ignore").rename(columns=lambda c: c.replace("C(year)", "year"))


def rows(data: LinRegData) -> np.ndarray:
    x, _ = data._all(need_target=True)
    return x[0 : x.shape[0]].numpy()


def test_encoding_names_and_codes_follow_patsy() -> None:
    levels = {"firm": ["A", "B", "C"], "year": [1935, 1936]}
    with_intercept = Encoding(levels, intercept=True)
    assert with_intercept.names(["x", "firm", "year"]) == ["x", "firm[T.B]", "firm[T.C]", "year[T.1936]"]
    # Without an intercept the first column keeps every level; the second still drops its reference.
    without = Encoding(levels, intercept=False)
    assert without.names(["firm", "year"]) == ["firm[A]", "firm[B]", "firm[C]", "year[T.1936]"]
    assert without.raw(["firm[A]", "x", "firm[C]", "year[T.1936]"]) == ["firm", "x", "year"]
    values = np.array(["C", "A", "B"], dtype=object)
    got = with_intercept.arrays(["firm[T.B]", "firm[T.C]"], lambda name: values, "t.csv")
    np.testing.assert_array_equal(np.stack(got, axis=1), [[0, 1], [0, 0], [1, 0]])
    with pytest.raises(LinRegError, match=r"t.csv: column 'firm' row 12 holds level 'D', which the training rows"):
        with_intercept.codes(np.array(["A", "D"], dtype=object), "firm", "t.csv", offset=10)
    with pytest.raises(LinRegError, match=r"t.csv: column 'firm' row 2 is empty"):
        with_intercept.codes(np.array(["A", None], dtype=object), "firm", "t.csv")
    with pytest.raises(LinRegError, match=r"column 'only' holds a single level 'x'"):
        Encoding({"only": ["x"]}, intercept=True)


@pytest.mark.parametrize("intercept", [True, False])
def test_in_memory_and_streamed_rows_equal_patsys_design(tmp_path: Path, intercept: bool) -> None:
    frame = grunfeld()
    frame.to_csv(tmp_path / "g.csv", index=False)
    (tmp_path / "parts").mkdir()
    order = frame.sort_values("firm", kind="stable")  # 'Westinghouse', the last level, only in the last part
    for k, chunk in enumerate(np.array_split(np.arange(len(order)), 3)):
        part = order.iloc[chunk].astype({"firm": "category"})  # written dictionary-encoded
        part.to_parquet(tmp_path / "parts" / f"{k}.parquet", index=False, row_group_size=25)
    formula = "firm + C(year) + value" + ("" if intercept else " - 1")
    categorical = ["firm", "year"]
    runs = {
        "csv": ("g.csv", False, frame),
        "csv streamed": ("g.csv", True, frame),
        "parquet streamed": ("parts", True, order),
        "parquet whole": ("parts", False, order),
    }
    for name, (path, stream, held) in runs.items():
        data = LinRegData(
            str(tmp_path / path),
            target="invest",
            features=["firm", "year", "value"],
            categorical=categorical,
            fit_intercept=intercept,
            stream=stream,
        )
        want = design(held, formula)
        assert sorted(data.feature_names) == sorted(want.columns), name
        np.testing.assert_array_equal(rows(data), want[data.feature_names].to_numpy(), err_msg=name)


def test_auto_takes_text_category_and_bool_and_leaves_indicators_unstandardized(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=60) * 3 + 5,
            "colour": pd.Categorical(rng.choice(["red", "green", "blue"], 60)),
            "city": rng.choice(["Oslo", "Lima"], 60),
            "on": rng.random(60) > 0.5,
            "code": rng.integers(1, 4, 60),  # integers stay numbers unless named
        }
    ).assign(y=lambda f: f["x"] + f["on"])
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    for stream in (False, True):
        data = LinRegData(str(tmp_path / "t.parquet"), stream=stream, batch_size=16)
        names = data.feature_names
        assert names == ["x", "colour[T.green]", "colour[T.red]", "city[T.Oslo]", "on[T.True]", "code"], stream
        data.check("fit")
        assert data.scaling is not None
        x_mean, x_scale = data.scaling[0], data.scaling[1]
        indicator = torch.tensor(["[" in n for n in names])
        assert (x_mean[indicator] == 0).all() and (x_scale[indicator] == 1).all()
        assert x_mean[0] == pytest.approx(frame["x"].mean()) and x_scale[0] != 1
    none = LinRegData(str(tmp_path / "t.parquet"), categorical="none")
    with pytest.raises(LinRegError, match=r"column 'colour' is text \(e.g. '\w+'\) and --data.categorical none"):
        _ = none.feature_names


def test_labels_are_refused_by_column_and_row(tmp_path: Path) -> None:
    frame = grunfeld()
    frame.loc[7, "firm"] = None
    frame.to_csv(tmp_path / "g.csv", index=False)
    for stream in (False, True):
        data = LinRegData(str(tmp_path / "g.csv"), target="invest", stream=stream)
        with pytest.raises(LinRegError, match=r"g.csv: column 'firm' row 8 is empty; a categorical column needs"):
            _ = data.feature_names
    many = grunfeld().assign(firm=[f"f{i}" for i in range(220)])
    many.to_csv(tmp_path / "many.csv", index=False)
    for stream in (False, True):
        with pytest.raises(LinRegError, match=r"column 'firm' has more than 50 distinct values \(e.g. 'f"):
            _ = LinRegData(str(tmp_path / "many.csv"), target="invest", stream=stream).feature_names
    forced = LinRegData(str(tmp_path / "many.csv"), target="invest", features=["firm"], categorical=["firm"])
    assert len(forced.feature_names) == 219  # named: any number of levels
