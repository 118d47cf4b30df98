"""Issue 24: a streamed Parquet table is decoded once, by the check every fit and predict runs first,
and later passes read those rows; a folder read whole (``--data.stream false``) goes through pyarrow
straight into one array. Both give the same rows, bit for bit, as the table held in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from linreg.data.batches import Batches
from linreg.data.source import Source
from linreg.data.tables import read_table
from linreg.errors import LinRegError
from tests.data.test_streams import COLUMNS, assert_same, fit, make, write_parts


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    decodes: list[tuple] = []
    real = Source.read_group
    monkeypatch.setattr(Source, "read_group", lambda self, *a: decodes.append(a) or real(self, *a))
    return decodes


def test_the_checked_rows_serve_every_epoch_without_decoding_again(workdir: Path, monkeypatch) -> None:
    """What a fit does (Table.matrix: check, then rows): the check decodes each row group once; the first
    epoch and every later one read the kept rows, shuffled batches equal to the table held whole."""
    frame = make(10_001)
    write_parts(frame, workdir / "parts", parts=3, row_group=1000)
    decodes = _count_decodes(monkeypatch)
    table = read_table(workdir / "parts", stream=True)
    x = table.matrix(COLUMNS[:-1], dtype=None, fit_float32=True)
    y = table.matrix(["y"], dtype=None, fit_float32=True)
    assert len(decodes) == 2 * 12  # features, then the target: each of the 12 row groups once
    decodes.clear()
    whole = torch.tensor(frame.to_numpy())
    streamed = Batches(x, y, 700, "blocks", seed=3)
    held = Batches(whole[:, :-1], whole[:, -1:], 700, "blocks", seed=3)
    for epoch in range(2):
        streamed.set_epoch(epoch)
        held.set_epoch(epoch)
        for a, b in zip(streamed.batches(), held.batches(), strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert decodes == []


def test_float64_columns_kept_once_serve_float32_training_by_a_cast(workdir: Path, monkeypatch) -> None:
    """The exact rows of float64 columns stay float64 (the closed form's input); the float32 rows SGD
    trains on are cast from the same kept rows, not decoded a second time."""
    frame = make(5_000).astype(np.float64) / 3  # values float32 cannot hold exactly
    write_parts(frame, workdir / "parts", parts=2, row_group=700)
    table = read_table(workdir / "parts", stream=True)
    exact = table.matrix(COLUMNS[:-1], dtype=None, fit_float32=True)
    assert exact.dtype == torch.float64
    decodes = _count_decodes(monkeypatch)
    train = Source.rows(exact.source, exact.names, torch.float32)
    values = torch.tensor(frame[COLUMNS[:-1]].to_numpy())
    assert torch.equal(exact[1234:3456], values[1234:3456])
    assert torch.equal(train[1234:3456], values[1234:3456].float())
    assert decodes == []


def test_a_bad_value_is_still_named_by_the_check_that_keeps_the_rows(workdir: Path) -> None:
    frame = make(3_000)
    frame.loc[2_345, "x3"] = np.inf
    write_parts(frame, workdir / "parts", parts=3, row_group=400)
    table = read_table(workdir / "parts", stream=True)
    with pytest.raises(LinRegError, match=r"part-002\.parquet: column 'x3' row 346 is inf$"):
        table.matrix(COLUMNS[:-1], dtype=None, fit_float32=True)


def test_a_folder_read_whole_goes_through_pyarrow_and_equals_pandas(workdir: Path) -> None:
    frame = make(6_001)
    write_parts(frame, workdir / "parts", parts=3, row_group=1000)
    table = read_table(workdir / "parts", stream=False)
    assert table.frame is None and table.stream is None  # one array, no pandas, not streamed
    x = table.matrix(COLUMNS[:-1], dtype=None, fit_float32=True)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x, torch.tensor(frame[COLUMNS[:-1]].to_numpy()))
    # An integer id column keeps its type on the way to predictions: that table comes through pandas.
    frame.insert(0, "id", np.arange(len(frame)))
    write_parts(frame, workdir / "with_id", parts=2)
    with_id = read_table(workdir / "with_id", stream=False)
    assert with_id.frame is not None and with_id.column("id").dtype == np.int64


def test_a_nan_in_a_folder_read_whole_is_named_by_row(workdir: Path) -> None:
    frame = make(3_000)
    frame.loc[2_001, "y"] = np.nan
    write_parts(frame, workdir / "parts", parts=3)
    table = read_table(workdir / "parts", stream=False)
    with pytest.raises(LinRegError, match=r"parts: column 'y' row 2002 is nan$"):
        table.matrix(["y"], dtype=None, fit_float32=True)


@pytest.mark.slow
def test_fits_of_a_folder_read_whole_and_streamed_agree(cli, workdir: Path) -> None:
    frame = make(8_000)
    write_parts(frame, workdir / "parts", parts=3)
    frame.to_parquet(workdir / "whole.parquet", index=False)
    streamed = fit(cli, workdir / "streamed", "--data.path", str(workdir / "parts"))
    read_whole = fit(cli, workdir / "read_whole", "--data.path", str(workdir / "parts"), "--data.stream", "false")
    one_file = fit(cli, workdir / "one_file", "--data.path", str(workdir / "whole.parquet"))
    assert_same(streamed, read_whole, sgd=1e-6, closed=1e-10)
    assert_same(read_whole, one_file, sgd=1e-6, closed=1e-10)
