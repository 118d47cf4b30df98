"""Tables that used to end badly (issue 27, the data rows; issue 25, two data rows): symlink loops,
text columns in streamed tables, pandas' index column, parts that change under a run, file names with
glob characters, an ``id`` column that counts rows, and the progress of a streamed table's passes.
Real files, real links, a real terminal (pty)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from linreg.data.datamodule import LinRegData
from linreg.data.files import expand
from linreg.data.progress import Progress
from linreg.data.source import Source
from tests.helpers import ROOT, error_line, last_ckpt

QUIET = ("--figures.enabled", "false", "--trainer.max_epochs", "2")
STREAM = ("--data.batch_size", "50", "--data.shuffle", "none")


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": x @ [1.0, 2.0] + 3 + 0.1 * rng.normal(size=rows)})


def summary(root: Path) -> dict:
    return json.loads((last_ckpt(root).parent / "summary.json").read_text())


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("linreg: note:")]


def test_a_symlink_loop_under_a_glob_or_folder_counts_each_file_once(cli, workdir, capsys) -> None:
    (workdir / "g" / "sub").mkdir(parents=True)
    for k in range(2):
        frame(100, seed=k).to_parquet(workdir / "g" / "sub" / f"p{k}.parquet", index=False)
    os.symlink("..", workdir / "g" / "sub" / "loop")  # g/sub/loop/sub/loop/... is g again
    for i, path in enumerate(("g/**/*.parquet", "g")):
        assert cli("fit", "--data.path", path, *STREAM, *QUIET) == 0
        assert summary(workdir)["rows"] == 200, path  # 8,200 on main: every file read 41 times
        (workdir / "lightning_logs").rename(workdir / f"run{i}")
    os.symlink("..", workdir / "g" / "sub" / "again")  # two loops: glob's own walk would branch 2^40 ways
    expected = ["g/sub/p0.parquet", "g/sub/p1.parquet"]
    assert expand("g/**/*.parquet") == expected and expand("g") == expected
    assert expand(str(workdir / "g" / "**" / "p?.parquet")) == [str(workdir / f) for f in expected]
    os.chdir(workdir / "g")
    assert expand("**/*.parquet") == ["sub/p0.parquet", "sub/p1.parquet"]  # a pattern from the working folder


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_text_column_in_a_streamed_table_is_refused_as_in_memory(cli, workdir, capsys, kind) -> None:
    table = frame(200)
    table["price"] = [f"{v:,}" for v in np.random.default_rng(1).integers(1000, 9000, 200)]  # "4,771"
    table.loc[150, "price"] = "1234"  # a plain number in a column of thousands separators
    whole = workdir / f"t.{kind}"
    table.to_csv(whole, index=False) if kind == "csv" else table.to_parquet(whole, index=False)
    (workdir / "parts").mkdir()
    whole.rename(workdir / "parts" / whole.name)
    lines = []
    for stream in ("false", "true"):
        assert cli("fit", "--data.path", "parts", "--data.stream", stream, *STREAM, *QUIET) == 1
        lines.append(error_line(capsys))
    want = f"column 'price' is not numeric (row 1: '{table['price'][0]}'); write numbers without thousands separators"
    assert lines[0] == f"linreg: error: parts: {want}"  # in memory: the folder, rows counted across it
    assert lines[1] == f"linreg: error: parts/t.{kind}: {want}"  # streamed: the part (main dropped the column)
    assert not (workdir / "lightning_logs").exists()


def test_a_word_column_is_left_out_with_a_note_in_both_modes(cli, workdir, capsys) -> None:
    table = frame(200)
    table["colour"] = np.random.default_rng(2).choice(["red", "green"], 200)
    table.to_csv(workdir / "t.csv", index=False)
    for stream in ("false", "true"):
        assert cli("fit", "--data.path", "t.csv", "--data.stream", stream, *STREAM, *QUIET) == 0
        assert summary(workdir)["features"] == ["a", "b", "colour[T.red]"]  # --data.categorical auto (issue 26)
        assert (
            cli("fit", "--data.path", "t.csv", "--data.stream", stream, "--data.categorical", "[]", *STREAM, *QUIET)
            == 0
        )
        assert notes(capsys.readouterr().err) == [
            "linreg: note: t.csv: text column(s) ['colour'] are not features (linreg needs numbers)"
        ]
        assert summary(workdir)["features"] == ["a", "b"]
    named = ("--data.features", "[a,colour]", "--data.categorical", "[]")
    assert cli("fit", "--data.path", "t.csv", "--data.stream", "true", *named, *STREAM, *QUIET) == 1
    assert error_line(capsys) == "linreg: error: t.csv: column 'colour' is not numeric (row 1: 'green')"


@pytest.mark.slow
def test_pandas_index_column_is_not_a_feature_in_either_mode(cli, workdir, capsys) -> None:
    frame(200).to_csv(workdir / "t.csv")  # with its index: an empty header cell, then 0, 1, 2, ...
    frame(200).to_csv(workdir / "new.csv")  # predict's table, index included
    note = (
        "linreg: note: t.csv: column(s) ['Unnamed: 0'] have no name in the header (an index written by "
        "pandas' to_csv): not features; name one in --data.features to use it"
    )
    for stream in ("false", "true"):
        assert cli("fit", "--data.path", "t.csv", "--data.stream", stream, *STREAM, *QUIET) == 0
        assert notes(capsys.readouterr().err) == [note]
        assert summary(workdir)["features"] == ["a", "b"]  # main: 'Unnamed: 0' in memory, '' streamed
        assert cli("predict", "--ckpt_path", "last", "--data.path", "new.csv", "--output", f"p{stream}.csv") == 0
        assert len(pd.read_csv(workdir / f"p{stream}.csv")) == 200  # main: "unexpected column(s) ['Unnamed: 0']"
        assert notes(capsys.readouterr().err) == [note.replace("t.csv", "new.csv")]
        named = ("--data.features", "['Unnamed: 0', a, b]")
        assert cli("fit", "--data.path", "t.csv", "--data.stream", stream, *named, *STREAM, *QUIET) == 0
        assert notes(capsys.readouterr().err) == []
        assert summary(workdir)["features"] == ["Unnamed: 0", "a", "b"]  # the same name in both modes
    (workdir / "parts").mkdir()
    frame(200).iloc[::2].to_parquet(workdir / "parts" / "p.parquet")  # its index kept: 0, 2, 4, ...
    for stream in ("false", "true"):
        assert cli("fit", "--data.path", "parts", "--data.stream", stream, *STREAM, *QUIET) == 0
        assert summary(workdir)["features"] == ["a", "b"]  # main, streamed: '__index_level_0__' too


@pytest.mark.parametrize("change", ["delete", "truncate"])
def test_a_part_that_changes_after_the_check_is_refused_naming_it(cli, workdir, capsys, monkeypatch, change) -> None:
    (workdir / "parts").mkdir()
    for k in range(3):
        frame(100, seed=k).to_parquet(workdir / "parts" / f"p{k}.parquet", index=False)
    part = workdir / "parts" / "p1.parquet"
    check, calls = Source.check, []

    def check_then_change(self, names, to_float32):  # the user's `rm` or a writer, after the check pass
        check(self, names, to_float32)
        calls.append(names)
        if len(calls) == 2:  # features, then the target: the check pass is over
            part.unlink() if change == "delete" else os.truncate(part, part.stat().st_size // 2)

    monkeypatch.setattr(Source, "check", check_then_change)
    assert cli("fit", "--data.path", "parts", *STREAM, *QUIET) == 1
    line = error_line(capsys)  # main: a FileNotFoundError traceback, or a fit whose checkpoint omits p1
    what = "vanished since linreg listed it" if change == "delete" else "changed since linreg checked it (size"
    assert line.startswith(f"linreg: error: parts/p1.parquet: cannot read: it {what}"), line
    assert not list(workdir.rglob("*.ckpt"))


def test_a_table_deleted_after_it_was_read_is_refused_naming_it(cli, workdir, capsys, monkeypatch) -> None:
    frame(100).to_parquet(workdir / "t.parquet", index=False)
    check = LinRegData._check_out_of_core

    def check_then_delete(self, x):  # read into memory, then gone before the fit fingerprints it
        check(self, x)
        (workdir / "t.parquet").unlink()

    monkeypatch.setattr(LinRegData, "_check_out_of_core", check_then_delete)
    assert cli("fit", "--data.path", "t.parquet", *QUIET) == 1  # main: FileNotFoundError from fingerprint()
    assert error_line(capsys) == (
        "linreg: error: t.parquet: vanished or unreadable since linreg read it (No such file or directory)"
    )
    assert not list(workdir.rglob("*.ckpt"))


@pytest.mark.slow
def test_a_name_with_glob_characters_that_exists_is_that_file(cli, workdir, capsys) -> None:
    tables = {"data[2020].csv": 30, "data2.csv": 40, "what?.csv": 50, "whatX.csv": 60}
    for name, rows in tables.items():
        frame(rows).to_csv(workdir / name, index=False)
    frame(70).to_parquet(workdir / "a*b.parquet", index=False)
    frame(80).to_parquet(workdir / "aXb.parquet", index=False)
    runs = [
        ("data[2020].csv", "false", 30),  # main: the class [2020] matched data2.csv
        ("what?.csv", "false", 50),  # main: both what?.csv and whatX.csv
        ("a*b.parquet", "false", 70),
        ("a*b.parquet", "true", 70),
        ("wha*.csv", "auto", 110),  # no such file: a pattern, as before
    ]
    for i, (path, stream, rows) in enumerate(runs):
        assert cli("fit", "--data.path", path, "--data.stream", stream, *STREAM, *QUIET) == 0, path
        assert summary(workdir)["rows"] == rows, path
        (workdir / "lightning_logs").rename(workdir / f"run{i}")


@pytest.mark.slow
@pytest.mark.parametrize("stream", ["false", "true"])
def test_an_id_column_that_counts_rows_is_noted_and_stays_a_feature(cli, workdir, capsys, stream) -> None:
    table = frame(200)
    table.insert(0, "id", np.arange(1, 201))
    table.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--data.stream", stream, *STREAM, *QUIET) == 0
    assert notes(capsys.readouterr().err) == [
        "linreg: note: t.csv: column 'id' counts the rows (unique integers from 1), rarely a feature, and is one; "
        "keep it and silence this with --data.features [id,a,b], or pass it through to predictions with "
        "--data.id_column id"
    ]
    assert summary(workdir)["features"] == ["id", "a", "b"]
    for flags in (("--data.features", "[id,a,b]"), ("--data.id_column", "id")):
        assert cli("fit", "--data.path", "t.csv", "--data.stream", stream, *flags, *STREAM, *QUIET) == 0
        assert notes(capsys.readouterr().err) == []
    table["id"] = np.random.default_rng(3).permutation(200) * 7  # integers, but not counting rows
    table.to_csv(workdir / "t.csv", index=False)
    assert cli("fit", "--data.path", "t.csv", "--data.stream", stream, *STREAM, *QUIET) == 0
    assert notes(capsys.readouterr().err) == []


def test_streamed_passes_report_one_line_each_outside_a_terminal(cli, workdir, capsys) -> None:
    (workdir / "parts").mkdir()
    for k in range(2):
        frame(300, seed=k).to_parquet(workdir / "parts" / f"p{k}.parquet", index=False)
    assert cli("fit", "--data.path", "parts", *STREAM, *QUIET) == 0
    err = capsys.readouterr().err
    passes = [line.split(":")[1].strip() for line in err.splitlines() if " rows in " in line]
    assert passes == [
        "checking 2 column(s) of parts",
        "checking 1 column(s) of parts",
        "statistics of 1 column(s) of parts",
        "statistics of 2 column(s) of parts",
        "least squares over 2 column(s) of parts",
        "the saved model's train metrics over 2 column(s) of parts",
    ]
    assert "linreg: checking 2 column(s) of parts: 600 of 600 rows in " in err and "\r" not in err
    assert cli("predict", "--ckpt_path", "last", "--data.path", "parts", "--output", "p.csv") == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if " rows in " in line][-1].startswith(
        "linreg: predicting parts: 600 of 600 rows in "
    )


@pytest.mark.slow
def test_streamed_passes_redraw_one_progress_line_on_a_terminal(workdir) -> None:
    (workdir / "parts").mkdir()
    frame(3000).to_parquet(workdir / "parts" / "p.parquet", index=False, row_group_size=100)
    script = (
        "import sys; from linreg.data import progress; progress.Progress.EVERY = 0.0\n"  # redraw at every block
        "from linreg.cli import main; main(sys.argv[1:])"
    )
    args = ["fit", "--data.path", "parts", *STREAM, *QUIET, "--trainer.enable_progress_bar", "false"]
    leader, follower = pty.openpty()  # a real terminal for stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=follower
    ) as proc:
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=120) == 0, out.decode()[-3000:]
    os.close(leader)
    text = out.decode()
    redraws = [part for part in text.split("\r") if part.startswith("linreg: checking 2 column(s) of parts: ")]
    assert len(redraws) > 3, text[-3000:]  # redrawn in place as the pass goes ...
    assert any("rows/s" in r and " left" in r for r in redraws)  # ... with its rate and the time left
    assert redraws[-1].startswith("linreg: checking 2 column(s) of parts: 3,000 of 3,000 rows in ")  # then done


def test_progress_is_cheap_and_silent_on_other_ranks(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = Progress("reading", 10_000_000)
    for _ in range(100_000):
        progress.update(1)  # a hundred thousand updates inside EVERY: no redraw at all
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "1")
    with Progress("reading", 5) as other:
        other.update(5)
    assert capsys.readouterr().err == ""
