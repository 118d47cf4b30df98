"""`linreg export`: real fits through the CLI, exported to ONNX and .pt2, checked against `linreg predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import linreg
from tests.helpers import SEED, last_ckpt

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
datasets = pytest.importorskip("sklearn.datasets")

BATCHES = (1, 7, 10_000)
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
STANDARDIZED = ("--data.standardize", "true", "--data.standardize_target", "true", "--trainer.max_epochs", "5")


def _diabetes() -> pd.DataFrame:
    return datasets.load_diabetes(as_frame=True, scaled=False).frame


# name: (training table or None for the seed's built-in data, target columns, fit flags, weights' dtype)
MODELS: dict[str, tuple[Any, list[str], tuple[str, ...], torch.dtype]] = {
    "seed": (None, ["y"], ("--config", SEED), torch.float32),
    "diabetes": (_diabetes, ["target"], ("--data.target", "target", *STANDARDIZED), torch.float32),
    "linnerud": (
        lambda: datasets.load_linnerud(as_frame=True).frame,
        ["Weight", "Waist", "Pulse"],
        ("--data.target", "[Weight, Waist, Pulse]", *STANDARDIZED),
        torch.float32,
    ),
    # float64, and no intercept: the checkpoint has no model.lin.bias at all.
    "diabetes64": (
        _diabetes,
        ["target"],
        ("--data.target", "target", *STANDARDIZED, "--trainer.precision", "64-true", "--model.fit_intercept", "false"),
        torch.float64,
    ),
}


def _rows(features: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """1 + 7 rows from the table (the seed's has 4: they repeat), then 10,000 drawn uniformly within each
    column's range (within it, no prediction is near zero, where a relative difference means little)."""
    first = features.iloc[np.arange(1 + 7) % len(features)].reset_index(drop=True)
    drawn = {c: rng.uniform(features[c].min(), features[c].max(), BATCHES[2]).round(4) for c in features.columns}
    return pd.concat([first, pd.DataFrame(drawn)], ignore_index=True)


def _rel(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """The largest difference relative to each row's prediction, and relative to the largest prediction
    of its target in the batch. The first is shown; the second is checked: where the linear layer's
    terms nearly cancel, a prediction near zero carries the rounding of terms a thousand times larger,
    and two correct float32 programs that sum in different orders (MLAS, MKL) differ by far more than
    1e-6 of it."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(got - want)
    return float(np.max(diff / np.abs(want))), float(np.max(diff.max(axis=0) / np.abs(want).max(axis=0)))


def _reference(ckpt: str) -> Any:
    """LinRegModule's forward in float64 numpy, from the checkpoint's own tensors: the exact model."""
    c = torch.load(ckpt, weights_only=True)
    s, hp = {k: v.numpy() for k, v in c["state_dict"].items()}, c["hyper_parameters"]

    def forward(x: np.ndarray) -> np.ndarray:
        z = (x - s["x_mean"]) / s["x_scale"] if hp["standardize"] else x
        out = z @ s["model.lin.weight"].T + s.get("model.lin.bias", 0.0)
        return out * s["y_scale"] + s["y_mean"] if hp["standardize"] else out

    return forward


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_export_matches_predict(cli, workdir, capsys, name: str) -> None:
    make_table, targets, flags, dtype = MODELS[name]
    if make_table:
        table = make_table()
        table.to_csv(workdir / "train.csv", index=False)
        flags = ("--data.path", "train.csv", *flags)
    else:
        table = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [2.0, 4.0, 6.0, 8.0]})  # the seed's built-in data
    assert cli("fit", *flags) == 0
    ckpt = str(last_ckpt(workdir))
    features = table.drop(columns=targets)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64

    _rows(features, np.random.default_rng(0)).to_csv(workdir / "rows.csv", index=False)
    assert cli("predict", "--ckpt_path", ckpt, "--data.path", "rows.csv", "--output", "p.csv") == 0
    x = pd.read_csv(workdir / "rows.csv").to_numpy(np.float64)  # read as linreg reads it
    # The CSV holds the shortest decimal that reads back as the very float32 (or float64) predict computed.
    standardizes = torch.load(ckpt, weights_only=True)["hyper_parameters"]["standardize"]
    out_dtype = np.float64 if standardizes else np_dtype  # the target's mean goes back on in float64
    predicted = pd.read_csv(workdir / "p.csv")[targets].to_numpy(np.float64).astype(out_dtype)

    capsys.readouterr()
    assert cli("export", "--ckpt_path", "last" if name == "seed" else ckpt, "--output", "m.onnx") == 0
    assert cli("export", "--ckpt_path", ckpt, "--output", "m.pt2") == 0
    out = capsys.readouterr().out
    shape = f"{_plural(features.shape[1], 'feature')} → {_plural(len(targets), 'target')}"
    assert f"to m.onnx (onnx, {shape})" in out and f"to m.pt2 (pt2, {shape})" in out

    summary = json.loads((Path(ckpt).parent / "summary.json").read_text())
    expected = {"feature_names": list(features.columns), "target_names": targets}
    expected["train_r2"] = summary["metrics"]["train/r2"]

    model = onnx.load(workdir / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert {key: json.loads(props[key]) for key in expected} == expected
    assert props["linreg_version"] == linreg.__version__
    session = ort.InferenceSession(str(workdir / "m.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "features" and isinstance(inp.shape[0], str) and inp.shape[1] == features.shape[1]
    assert outp.name == "predictions" and isinstance(outp.shape[0], str) and outp.shape[1] == len(targets)

    extra = {"linreg.json": ""}
    program = torch.export.load(workdir / "m.pt2", extra_files=extra).module()
    meta = json.loads(extra["linreg.json"])
    assert {key: meta[key] for key in expected} == expected and meta["linreg_version"] == linreg.__version__

    exact = _reference(ckpt)(x) if dtype == torch.float64 else None
    for start, stop in ((0, 1), (1, 8), (8, 8 + BATCHES[2])):
        rows = x[start:stop].astype(np_dtype)
        with torch.no_grad():
            got = {"onnx": session.run(["predictions"], {"features": rows})[0], "pt2": program(torch.from_numpy(rows))}
        for fmt, values in got.items():
            values = np.asarray(values)
            assert values.dtype == out_dtype and values.shape == (stop - start, len(targets))
            label = f"{name} {fmt} batch {stop - start}: max rel diff"
            per_row, rel = _rel(values, predicted[start:stop])
            print(f"{label} {rel:.3g} (per row {per_row:.3g}) vs predict")
            if exact is None:
                assert rel <= TOLERANCE[dtype]
            else:
                per_row, exact_rel = _rel(values, exact[start:stop])
                print(f"{label} {exact_rel:.3g} (per row {per_row:.3g}) vs the float64 checkpoint")
                assert exact_rel <= TOLERANCE[dtype]
                assert rel <= TOLERANCE[dtype]  # and `linreg predict` on the float64 checkpoint agrees

    if name == "seed":  # the tutorial's f(5), from the built-in predict data
        assert cli("predict", "--config", SEED, "--ckpt_path", ckpt, "--output", "f5.csv") == 0
        f5 = pd.read_csv(workdir / "f5.csv")["y"].to_numpy(np.float64).astype(np.float32)
        assert session.run(None, {"features": np.array([[5.0]], np.float32)})[0][0, 0] == f5[0]


@pytest.fixture
def ckpt(cli, workdir) -> str:
    assert cli("fit", "--config", SEED, "--trainer.max_epochs", "2") == 0
    return str(last_ckpt(workdir))


def _refused(cli, capsys, *args: str) -> str:
    """The one line a refused export prints; nothing else on stderr, and no temporary file left."""
    capsys.readouterr()
    assert cli("export", *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("linreg: error: ")
    assert not list(Path(".").glob(".*.tmp")) and not list(Path(".").glob("*/.*.tmp"))
    return err[0]


def test_not_a_linreg_checkpoint(cli, workdir, capsys) -> None:
    torch.save({"state_dict": {"w": torch.ones(1)}}, workdir / "other.ckpt")
    err = _refused(cli, capsys, "--ckpt_path", "other.ckpt", "--output", "m.pt2")
    assert "other.ckpt: not a linreg checkpoint" in err
    assert not (workdir / "m.pt2").exists()


def test_unknown_extension(cli, workdir, capsys, ckpt) -> None:
    err = _refused(cli, capsys, "--ckpt_path", ckpt, "--output", "m.pb")
    assert "m.pb" in err and ".onnx" in err and ".pt2" in err
    assert not (workdir / "m.pb").exists()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_existing_output_needs_overwrite(cli, workdir, capsys, ckpt, suffix: str) -> None:
    old = workdir / f"m{suffix}"
    old.write_text("old")
    err = _refused(cli, capsys, "--ckpt_path", ckpt, "--output", old.name)
    assert "already exists; pass --overwrite true" in err and old.read_text() == "old"
    assert cli("export", "--ckpt_path", ckpt, "--output", old.name, "--overwrite", "true") == 0
    assert old.read_bytes() != b"old" and not list(workdir.glob(".*.tmp"))
    if suffix == ".onnx":
        onnx.checker.check_model(onnx.load(old))
    else:
        assert torch.export.load(old).module()(torch.tensor([[5.0], [1.0]])).shape == (2, 1)


def test_output_folder_missing(cli, workdir, capsys, ckpt) -> None:
    err = _refused(cli, capsys, "--ckpt_path", ckpt, "--output", "nowhere/m.onnx")
    assert "folder nowhere does not exist" in err and not (workdir / "nowhere").exists()


def test_onnx_stack_missing(cli, workdir, capsys, ckpt, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    err = _refused(cli, capsys, "--ckpt_path", ckpt, "--output", "m.onnx")
    assert 'pip install "linreg[export]"' in err and "onnxscript" in err
    assert not (workdir / "m.onnx").exists()
    assert cli("export", "--ckpt_path", ckpt, "--output", "m.pt2") == 0  # .pt2 needs only torch
