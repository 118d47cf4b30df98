"""Tables larger than memory (issue 16): Parquet files, folders and globs, and CSV, streamed through
pyarrow, give the numbers of the same rows in memory; bad values are named by file and row; fit and
predict keep resident memory bounded by a batch, not the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from linreg.data.batches import Batches
from linreg.data.source import Source
from linreg.errors import LinRegError
from linreg.training.module import LinRegModule
from tests.helpers import ROOT, last_ckpt

D = 5
COLUMNS = [f"x{i}" for i in range(D)] + ["y"]


def make(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, D)).astype(np.float32) * np.float32(3) + np.float32(10)
    y = (x @ rng.normal(size=D) + 3 + 0.1 * rng.normal(size=rows)).astype(np.float32)
    return pd.DataFrame(np.column_stack([x, y]), columns=COLUMNS)


def write_parts(frame: pd.DataFrame, folder: Path, parts: int, row_group: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
        table = pa.Table.from_pandas(frame.iloc[chunk], preserve_index=False)
        pq.write_table(table, folder / f"part-{k:03d}.parquet", row_group_size=row_group)
    return folder


def fit(cli, where: Path, *flags: str) -> dict:
    where.mkdir(exist_ok=True)
    here = os.getcwd()
    os.chdir(where)
    try:
        base = ("--figures.enabled", "false", "--trainer.max_epochs", "3", "--data.batch_size", "1000")
        assert cli("fit", *base, "--data.shuffle", "none", "--model.lr", "0.01", *flags) == 0
        return json.loads((last_ckpt(where).parent / "summary.json").read_text())
    finally:
        os.chdir(here)


def coef(summary: dict, part: str) -> np.ndarray:
    solution = summary["targets"]["y"][part]
    return np.array([*solution["coef"].values(), solution["intercept"]])


def assert_same(a: dict, b: dict, sgd: float, closed: float) -> None:
    for part, tol in (("fitted", sgd), ("closed_form", closed)):
        diff = np.max(np.abs(coef(a, part) - coef(b, part)) / np.abs(coef(a, part)))
        print(f"{part}: max relative difference {diff:.2e}")
        assert diff <= tol


@pytest.mark.slow
def test_streamed_parquet_folder_glob_and_csv_equal_the_table_held_whole(cli, workdir) -> None:
    frame = make(30_000).astype(np.float64)  # float64 text round-trips: the CSV holds the Parquet's values
    frame.to_parquet(workdir / "whole.parquet", index=False)
    write_parts(frame, workdir / "parts", parts=3)
    frame.to_csv(workdir / "whole.csv", index=False)
    in_memory = fit(cli, workdir / "mem", "--data.path", str(workdir / "whole.parquet"))
    folder = fit(cli, workdir / "folder", "--data.path", str(workdir / "parts"))
    pattern = fit(cli, workdir / "glob", "--data.path", str(workdir / "parts" / "part-*.parquet"))
    csv = fit(cli, workdir / "csv", "--data.path", str(workdir / "whole.csv"), "--data.stream", "true")
    assert_same(in_memory, folder, sgd=1e-6, closed=1e-10)
    assert_same(folder, pattern, sgd=0.0, closed=0.0)
    assert_same(folder, csv, sgd=1e-6, closed=1e-10)  # CSV streamed equals Parquet streamed


def test_a_nan_in_the_third_part_is_named_with_file_and_row(cli, workdir, capsys) -> None:
    frame = make(3 * 130_000)
    frame.loc[2 * 130_000 + 123_456, "x3"] = np.nan  # row 123,457 of the third part
    write_parts(frame, workdir / "parts", parts=3, row_group=50_000)
    assert cli("fit", "--data.path", "parts", "--trainer.max_epochs", "1") == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "linreg: error: parts/part-002.parquet: column 'x3' row 123457 is nan"
    assert not list(workdir.glob("lightning_logs/*/checkpoints/*.ckpt"))  # before any checkpoint


def test_text_in_a_streamed_csv_is_named(cli, workdir, capsys) -> None:
    frame = make(5000)
    text = frame.to_csv(index=False).splitlines()
    text[4001] = text[4001].replace(text[4001].split(",")[1], "oops", 1)  # row 4001, column x1
    (workdir / "t.csv").write_text("\n".join(text) + "\n")
    assert cli("fit", "--data.path", "t.csv", "--data.stream", "true", "--data.shuffle", "none") == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "t.csv: column 'x1' is not numeric (row 4001: 'oops')" in line


def test_streamed_training_needs_bounded_batches_and_an_order_the_format_serves(cli, workdir, capsys) -> None:
    make(100).to_csv(workdir / "t.csv", index=False)
    stream = ("--data.path", "t.csv", "--data.stream", "true")
    assert cli("fit", *stream) == 1  # a full batch would hold the table in memory
    assert "needs --data.batch_size" in capsys.readouterr().err
    assert cli("fit", *stream, "--data.batch_size", "10") == 1  # default shuffle: blocks
    assert "--data.shuffle none" in capsys.readouterr().err
    assert cli("fit", *stream, "--data.batch_size", "10", "--data.shuffle", "none", "--trainer.max_epochs", "2") == 0
    assert cli("test", *stream, "--ckpt_path", "last") == 0  # evaluating needs neither


def test_folder_details_multi_target_validation_and_predict_ids(cli, workdir, capsys) -> None:
    """Hidden and _temporary parts are not rows; a float64 part keeps its digits beside float32 ones;
    a streamed validation table with two targets; predictions carry an id column with missing ids."""
    frame = make(3000)
    frame["z"] = frame["y"] * 2 - 1
    frame["id"] = [f"r{i}" if i % 7 else None for i in range(len(frame))]
    write_parts(frame, workdir / "parts", parts=3)
    for junk in (".ipynb_checkpoints", "_temporary"):
        write_parts(frame.iloc[:10], workdir / "parts" / junk, parts=1)
    part = pq.read_table(workdir / "parts" / "part-002.parquet").to_pandas()
    part["x0"] = part["x0"].astype(np.float64) + 1e-9  # digits float32 cannot hold
    pq.write_table(pa.Table.from_pandas(part, preserve_index=False), workdir / "parts" / "part-002.parquet")
    write_parts(frame.iloc[:500], workdir / "val", parts=2)
    common = ("--data.path", "parts", "--data.target", "[y,z]", "--data.id_column", "id", "--data.batch_size", "700")
    flags = ("--data.val_path", "val", "--trainer.max_epochs", "2", "--figures.enabled", "false")
    assert cli("fit", *common, *flags) == 0
    summary = json.loads((last_ckpt(workdir).parent / "summary.json").read_text())
    assert summary["rows"] == 3000  # not the 10 rows of each junk folder
    assert "val/r2" in summary["metrics"]
    ckpt = str(last_ckpt(workdir))
    assert (
        cli("predict", "--ckpt_path", ckpt, "--data.path", "parts", "--data.id_column", "id", "--output", "p.csv") == 0
    )
    written = pd.read_csv(workdir / "p.csv")
    assert list(written.columns) == ["id", "y", "z"] and len(written) == 3000
    assert written["id"].isna().sum() == frame["id"].isna().sum() and written["id"].iloc[1] == "r1"


def test_streamed_batches_are_the_rows_of_the_table_held_whole(workdir) -> None:
    """Each rank's slice of every shuffled batch, from the start and resumed mid-epoch, where batches
    straddle row groups and parts are not a multiple of them, equals that slice of the table in memory
    bit for bit."""
    frame = make(10_001)
    write_parts(frame, workdir / "parts", parts=3, row_group=1000)
    source = Source(str(workdir / "parts"))
    source.check(COLUMNS, to_float32=True)
    whole = torch.tensor(frame.to_numpy())
    for rank, skip in ((0, 0), (1, 0), (0, 5)):
        x, y = source.rows(COLUMNS[:-1], torch.float32), source.rows(["y"], torch.float32)
        streamed = Batches(x, y, 700, "blocks", seed=3, rank=rank, world_size=2)
        held = Batches(whole[:, :-1], whole[:, -1:], 700, "blocks", seed=3, rank=rank, world_size=2)
        pairs = list(zip(streamed.batches(skip), held.batches(skip), strict=True))
        assert len(pairs) == 15 - skip
        for a, b in pairs:
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def _epochs_equal_the_table(workdir: Path, epochs: int = 3) -> Source:
    """Three shuffled epochs of a streamed folder, batch by batch, against the table held whole."""
    frame = make(10_001)
    write_parts(frame, workdir / "parts", parts=3, row_group=1000)
    source = Source(str(workdir / "parts"))
    source.check(COLUMNS, to_float32=True)
    whole = torch.tensor(frame.to_numpy())
    x, y = source.rows(COLUMNS[:-1], torch.float32), source.rows(["y"], torch.float32)
    streamed = Batches(x, y, 700, "blocks", seed=3)
    held = Batches(whole[:, :-1], whole[:, -1:], 700, "blocks", seed=3)
    for epoch in range(epochs):
        streamed.set_epoch(epoch)
        held.set_epoch(epoch)
        for a, b in zip(streamed.batches(), held.batches(), strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    return x


def test_later_epochs_read_the_decoded_copy_and_equal_the_table(workdir, monkeypatch) -> None:
    """A row group decoded twice is kept decoded; from then on batches come from that copy."""
    x = _epochs_equal_the_table(workdir)
    assert x._decoded.file is not None and len(x._decoded.done) == len(x._group_keys) == 12  # 4 per part
    decodes = []
    real = Source.read_group
    monkeypatch.setattr(Source, "read_group", lambda self, *a: decodes.append(a) or real(self, *a))
    x._cache.clear()
    assert x[2000:2700].shape == (700, D) and decodes == []  # served from the copy, not decoded again


def test_no_room_for_the_decoded_copy_decodes_as_before(workdir, monkeypatch) -> None:
    """A temporary folder that fills up while the copy is written (a real 1 MiB filesystem, filled
    by another file after the copy was sized): the copy is dropped and reads decode, results equal."""
    small = workdir / "tmp"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        monkeypatch.setattr("tempfile.tempdir", str(small))
        real = Source.rows

        def rows_then_fill(self, names, dtype):
            made = real(self, names, dtype)
            (small / "filler").write_bytes(bytes(1 << 20)[:900_000])  # most of what is left
            return made

        monkeypatch.setattr(Source, "rows", rows_then_fill)
        x = _epochs_equal_the_table(workdir)
        assert x._decoded.file is None  # dropped at the first write that did not fit
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_part_damaged_after_the_check_is_named_when_training_reads_it(workdir) -> None:
    write_parts(make(3000), workdir / "parts", parts=3, row_group=500)
    x = Source(str(workdir / "parts")).rows(COLUMNS[:-1], torch.float32)
    part = workdir / "parts" / "part-002.parquet"
    data = bytearray(part.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4 : -8 - footer] = bytes(len(data) - 12 - footer)  # every page of the part; the footer stays
    part.write_bytes(data)
    assert x[1900:2000].shape == (100, D)  # the parts before it still read
    with pytest.raises(LinRegError, match=r"^\S*parts/part-002\.parquet: cannot read: ") as raised:
        x[1900:2100]
    assert "\n" not in str(raised.value)


RSS = """
import sys
def rss(key):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key)))
from linreg.cli import main
base = rss("VmRSS:")
try:
    main(sys.argv[1:])
finally:
    print(f"RSS base={base} peak={rss('VmHWM:')}")
"""


def peak_above_base(cwd: Path, *args: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", RSS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RSS"))
    base, peak = (int(part.split("=")[1]) for part in line.split()[1:])
    return (peak - base) * 1024


@pytest.mark.slow
def test_memory_does_not_grow_with_the_table(tmp_path: Path) -> None:
    """Fit (two epochs: the second reads the decoded copy) and predict on Parquet folders of about 300 MiB
    and 15 MiB (same row groups, 33 float32 columns): peak resident memory within 96 MiB of each other,
    and the predictions complete and in order."""
    rng = np.random.default_rng(1)
    names = [f"x{i}" for i in range(32)]
    w = rng.normal(size=32).astype(np.float32)
    sizes = {"big": 2_300_000, "small": 115_000}
    grown = {}
    for label, rows in sizes.items():
        folder = tmp_path / label
        folder.mkdir()
        for k, start in enumerate(range(0, rows, 500_000)):
            n = min(500_000, rows - start)
            x = rng.normal(size=(n, 32)).astype(np.float32)
            table = pa.table({**{c: x[:, j] for j, c in enumerate(names)}, "y": x @ w + np.float32(0.5)})
            pq.write_table(table, folder / f"part-{k}.parquet", row_group_size=65_536, compression="none")
        fit_flags = ("--data.batch_size", "65536", "--trainer.max_epochs", "2", "--model.tol", "0")  # epoch 2: the copy
        fit_flags += ("--figures.enabled", "false")
        fit_grown = peak_above_base(folder, "fit", "--data.path", str(folder), *fit_flags)
        ckpt = str(next(folder.glob("lightning_logs/*/checkpoints/last.ckpt")))
        predict = ("predict", "--ckpt_path", ckpt, "--data.path", str(folder), "--data.batch_size", "65536")
        predict_grown = peak_above_base(folder, *predict, "--output", str(tmp_path / f"{label}.csv"))
        written = pd.read_csv(tmp_path / f"{label}.csv")["y"].to_numpy()
        first = pq.read_table(folder / "part-0.parquet").slice(0, 5).to_pandas()
        assert len(written) == rows
        model = LinRegModule.load_from_checkpoint(ckpt, map_location="cpu")
        expected = model(torch.tensor(first[names].to_numpy(np.float32))).detach().numpy()[:, 0]
        assert np.allclose(written[:5], expected, rtol=1e-6)  # the first rows come first
        grown[label] = (fit_grown, predict_grown)
        print(f"{label}: {rows} rows, fit +{fit_grown / 2**20:.0f} MiB, predict +{predict_grown / 2**20:.0f} MiB")
    for stage in (0, 1):
        assert abs(grown["big"][stage] - grown["small"][stage]) <= 96 * 2**20


@pytest.mark.slow
def test_two_process_ddp_on_a_streamed_folder_equals_one_process(cli, workdir) -> None:
    """Each rank reads its own slice of every global batch from the Parquet parts: the weights and the
    closed form equal the one-process fit's."""
    write_parts(make(7_001), workdir / "parts", parts=3, row_group=1000)
    one = fit(cli, workdir / "one", "--data.path", str(workdir / "parts"))
    (workdir / "ddp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flags = ("--figures.enabled", "false", "--trainer.max_epochs", "3", "--data.batch_size", "1000")
    flags += ("--data.shuffle", "none", "--model.lr", "0.01", "--data.path", str(workdir / "parts"))
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    done = subprocess.run(
        [sys.executable, "-m", "linreg.cli", "fit", *flags, *ddp],
        cwd=workdir / "ddp",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((last_ckpt(workdir / "ddp").parent / "summary.json").read_text())
    assert_same(one, two, sgd=1e-6, closed=1e-10)
