"""`--data.categorical` through the real CLI, against statsmodels' formulas on the Grunfeld panel (a string
column of firms, shipped with statsmodels): fit in memory and streamed, checkpoint → predict, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import error_line, last_ckpt
from tests.training.test_distributed import DDP, linreg

QUIET = ("--figures.enabled", "false")
STATS = ("params", "bse", "tvalues", "pvalues")
FIT = ("fit", "--data.target", "invest", "--data.features", "[firm, value, capital]", "--model.solver", "lstsq", *QUIET)


def grunfeld() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.grunfeld.load_pandas().data


def ols(frame: pd.DataFrame, formula: str = "invest ~ firm + value + capital"):
    import statsmodels.formula.api as smf

    return smf.ols(formula, frame).fit()


def summary(root: Path) -> dict:
    return json.loads((last_ckpt(root).parent / "summary.json").read_text())


def assert_equals_statsmodels(s: dict, ref, intercept: bool = True) -> None:
    """Every coefficient, standard error, t and p of the summary against statsmodels', by name."""
    target = s["targets"]["invest"]
    names = list(ref.params.index.drop("Intercept", errors="ignore"))
    assert sorted(s["features"]) == sorted(names)
    coef = [target["fitted"]["coef"][n] for n in names]
    stats = {key: [target["inference"]["coef"][n][key] for n in names] for key in ("se", "t", "p")}
    if intercept:
        names = ["Intercept", *names]
        coef.insert(0, target["fitted"]["intercept"])
        for key in stats:
            stats[key].insert(0, target["inference"]["intercept"][key])
    else:
        assert target["fitted"]["intercept"] is None
    np.testing.assert_allclose(coef, ref.params[names], rtol=1e-8)
    for key, theirs in (("se", ref.bse), ("t", ref.tvalues), ("p", ref.pvalues)):
        np.testing.assert_allclose(stats[key], theirs[names], rtol=1e-6, err_msg=key)


def test_fit_in_memory_and_streamed_equal_statsmodels_and_predict_round_trips(cli, workdir, capsys) -> None:
    frame = grunfeld()
    frame.to_csv(workdir / "grunfeld.csv", index=False)
    (workdir / "parts").mkdir()
    for k, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):  # a firm's rows span two parts
        frame.iloc[rows].to_parquet(workdir / f"parts/{k}.parquet", index=False, row_group_size=32)
    ref = ols(frame)

    assert cli(*FIT, "--data.path", "grunfeld.csv") == 0
    out = capsys.readouterr().out
    assert "firm[T.Chrysler]" in out and "firm[T.American Steel]" not in out  # the first level is the reference
    memory = summary(workdir)
    assert_equals_statsmodels(memory, ref)
    ckpt = last_ckpt(workdir)
    assert torch.load(ckpt, weights_only=True)["LinRegData"]["categories"] == {"firm": sorted(frame["firm"].unique())}

    new = frame.drop(columns="invest").iloc[::7]  # columns in another order than training's
    new[["year", "capital", "firm", "value"]].to_csv(workdir / "new.csv", index=False)
    assert cli("predict", "--ckpt_path", str(ckpt), "--data.path", "new.csv", "--data.id_column", "year",
               "--output", "p.csv") == 0  # fmt: skip
    got = pd.read_csv(workdir / "p.csv")
    np.testing.assert_allclose(got["invest"], ref.predict(new), rtol=1e-8)
    np.testing.assert_array_equal(got["year"], new["year"])

    stream = ("--data.path", "parts", "--data.stream", "true", "--data.batch_size", "50", "--data.shuffle", "none")
    assert cli(*FIT, *stream) == 0
    streamed = summary(workdir)
    assert_equals_statsmodels(streamed, ref)
    for name in ref.params.index.drop("Intercept"):
        np.testing.assert_allclose(
            streamed["targets"]["invest"]["fitted"]["coef"][name],
            memory["targets"]["invest"]["fitted"]["coef"][name],
            rtol=1e-10,
        )

    unseen = new.head(3).copy()
    unseen.loc[unseen.index[1], "firm"] = "Ford"
    unseen.to_csv(workdir / "unseen.csv", index=False)
    for stream in ("false", "true"):
        args = ("--data.path", "unseen.csv", "--data.stream", stream, "--data.id_column", "year", "--output", "u.csv")
        assert cli("predict", "--ckpt_path", str(ckpt), *args) == 1
        line = error_line(capsys)
        assert "unseen.csv: column 'firm' row 2 holds level 'Ford'" in line and "never held" in line
    assert not (workdir / "u.csv").exists()


def test_without_an_intercept_every_level_is_kept_and_sgd_reaches_the_same(cli, workdir) -> None:
    frame = grunfeld()
    frame.to_csv(workdir / "grunfeld.csv", index=False)
    assert cli(*FIT, "--data.path", "grunfeld.csv", "--model.fit_intercept", "false") == 0
    ref = ols(frame, "invest ~ firm + value + capital - 1")
    assert "firm[American Steel]" in ref.params.index  # statsmodels' name for a level in a full set
    assert_equals_statsmodels(summary(workdir), ref, intercept=False)

    sgd = ("--trainer.max_epochs", "3000", "--model.tol", "1e-9", "--model.solver", "sgd")
    assert cli(*FIT, "--data.path", "grunfeld.csv", *sgd) == 0
    s = summary(workdir)
    coef = s["targets"]["invest"]["fitted"]["coef"]
    ref = ols(frame)
    ours = np.array([coef[n] for n in ref.params.index[1:]])
    np.testing.assert_allclose(ours, ref.params.iloc[1:], rtol=1e-3, atol=1e-3 * np.abs(ref.params.iloc[1:]).max())
    state = torch.load(last_ckpt(workdir), weights_only=True)["state_dict"]
    indicators = torch.tensor(["[" in f for f in s["features"]])
    assert (
        indicators.sum() == 10
        and (state["x_mean"][indicators] == 0).all()
        and (state["x_scale"][indicators] == 1).all()
    )
    assert (state["x_scale"][~indicators] != 1).all()  # value and capital are standardized


def test_refusals_name_the_column(cli, workdir, capsys) -> None:
    frame = grunfeld()
    frame.to_csv(workdir / "grunfeld.csv", index=False)
    assert cli(*FIT, "--data.path", "grunfeld.csv") == 0
    assert cli("export", "--ckpt_path", str(last_ckpt(workdir)), "--output", "m.pt2") == 1
    line = error_line(capsys)
    assert "categorical column(s) ['firm']" in line and "linreg predict" in line
    assert not (workdir / "m.pt2").exists()

    base = ("fit", "--data.target", "invest", "--model.solver", "lstsq", *QUIET)
    assert cli(*base, "--data.path", "grunfeld.csv", "--data.categorical", "none") == 1
    line = error_line(capsys)
    assert "column 'firm' is text" in line and "--data.categorical auto" in line

    many = frame.assign(firm=[f"firm {i}" for i in range(len(frame))])
    many.to_csv(workdir / "many.csv", index=False)
    assert cli(*base, "--data.path", "many.csv") == 1
    line = error_line(capsys)
    assert "column 'firm' has more than 50 distinct values (e.g. 'firm 50')" in line

    commas = frame.assign(value=[f"{v:,.1f}" for v in frame["value"]])
    commas.to_csv(workdir / "commas.csv", index=False)
    assert cli(*base, "--data.path", "commas.csv") == 1
    line = error_line(capsys)
    assert "column 'value' is not numeric (row 1: '3,078.5'); write numbers without thousands separators" in line

    assert cli(*base, "--data.path", "grunfeld.csv", "--data.fit_intercept", "false") == 1
    assert "set --model.fit_intercept instead" in error_line(capsys)  # the data's follows the model's

    assert cli(*base, "--data.path", "grunfeld.csv", "--data.categorical", "[year, nothing]") == 1
    assert "--data.categorical names ['nothing'], which are not features" in error_line(capsys)


def test_a_forced_integer_column_equals_statsmodels_c(cli, workdir) -> None:
    frame = grunfeld().assign(year=lambda f: f["year"].astype(int))
    frame = frame[frame["year"] < 1940]  # 5 years, 55 rows
    frame.to_csv(workdir / "g.csv", index=False)
    args = ("--data.features", "[firm, year, value]", "--data.categorical", "[firm, year]")
    assert cli("fit", "--data.path", "g.csv", "--data.target", "invest", "--model.solver", "lstsq", *args, *QUIET) == 0
    fitted = ols(frame.rename(columns={"year": "yr"}), "invest ~ firm + C(yr) + value")
    named = {key: getattr(fitted, key).rename(lambda n: n.replace("C(yr)", "year")) for key in STATS}
    ref = SimpleNamespace(**named)
    assert "year[T.1936]" in ref.params.index
    assert_equals_statsmodels(summary(workdir), ref)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_in_memory_and_streamed(tmp_path: Path) -> None:
    frame = grunfeld()
    frame.to_csv(tmp_path / "grunfeld.csv", index=False)
    (tmp_path / "parts").mkdir()
    for k, chunk in enumerate(np.array_split(np.arange(len(frame)), 4)):
        frame.iloc[chunk].to_parquet(tmp_path / f"parts/{k}.parquet", index=False, row_group_size=20)
    streamed = ("--data.path", str(tmp_path / "parts"), "--data.stream", "true", "--data.batch_size", "32")
    runs = {}
    for name, extra in (
        ("one", ("--data.path", str(tmp_path / "grunfeld.csv"))),
        ("ddp", ("--data.path", str(tmp_path / "grunfeld.csv"), *DDP)),
        ("ddp streamed", (*streamed, "--data.shuffle", "none", *DDP)),
    ):
        (tmp_path / name).mkdir()
        linreg(tmp_path / name, *FIT, *extra)
        runs[name] = summary(tmp_path / name)
    one = runs["one"]["targets"]["invest"]
    for name in ("ddp", "ddp streamed"):
        assert runs[name]["features"] == runs["one"]["features"], name
        ddp = runs[name]["targets"]["invest"]
        for feature in runs["one"]["features"]:
            np.testing.assert_allclose(ddp["fitted"]["coef"][feature], one["fitted"]["coef"][feature], rtol=1e-9)
            se = ddp["inference"]["coef"][feature]["se"], one["inference"]["coef"][feature]["se"]
            np.testing.assert_allclose(*se, rtol=1e-9)
        assert_equals_statsmodels(runs[name], ols(frame))


def test_robust_errors_intervals_and_validate_with_indicators(cli, workdir, capsys) -> None:
    """Parts 3 and 4 of issue 26 on a model with indicator columns: HC3 standard errors and predict
    --interval equal statsmodels' formula fit; validate re-encodes its table with the checkpoint's levels."""
    import statsmodels.formula.api as smf

    frame = grunfeld()
    frame.to_csv(workdir / "grunfeld.csv", index=False)
    assert cli(*FIT, "--data.path", "grunfeld.csv", "--model.cov_type", "HC3") == 0
    ref = smf.ols("invest ~ firm + value + capital", frame).fit(cov_type="HC3")
    assert_equals_statsmodels(summary(workdir), ref)
    ckpt = str(last_ckpt(workdir))
    new = frame.iloc[3::10]
    new.drop(columns="invest").to_csv(workdir / "new.csv", index=False)
    args = ("--data.path", "new.csv", "--data.id_column", "year", "--output", "p.csv", "--interval", "0.9")
    assert cli("predict", "--ckpt_path", ckpt, *args) == 0
    got = pd.read_csv(workdir / "p.csv")
    want = ref.get_prediction(new).summary_frame(alpha=0.1)
    np.testing.assert_allclose(got["invest"], want["mean"], rtol=1e-8)
    for ours, theirs in (("mean_lower", "mean_ci_lower"), ("upper", "obs_ci_upper")):
        np.testing.assert_allclose(got[f"invest_{ours}"], want[theirs], rtol=1e-6, err_msg=ours)
    capsys.readouterr()
    assert cli("validate", "--ckpt_path", ckpt, "--data.path", "grunfeld.csv", *QUIET) == 0
    out = capsys.readouterr().out
    assert "val/r2" in out and f"{ref.rsquared:.6f}"[:6] in out


@pytest.mark.parametrize("stream", ["false", "true"])
def test_categorical_columns_with_sample_weights_equal_statsmodels_wls(stream, cli, workdir) -> None:
    """The two parts of a real table together: indicators for the firms and a weights column (weighing each
    firm-year by 1/capital, deterministic), in memory and streamed, equal `smf.wls` of the same formula."""
    import statsmodels.formula.api as smf

    frame = grunfeld().assign(w=lambda f: 1000.0 / f["capital"])
    frame.to_parquet(workdir / "g.parquet") if stream == "true" else frame.to_csv(workdir / "g.csv", index=False)
    data = "g.parquet" if stream == "true" else "g.csv"
    flags = ("--data.path", data, "--data.weights", "w", "--data.stream", stream)
    assert cli(*FIT, *flags, *(("--data.batch_size", "64") if stream == "true" else ())) == 0
    ref = smf.wls("invest ~ firm + value + capital", frame, weights=frame["w"]).fit()
    assert_equals_statsmodels(summary(workdir), ref)
