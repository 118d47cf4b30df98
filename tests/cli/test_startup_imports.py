"""Start-up (issue 24): the seed fit imports no optional heavy module it does not use.

pyarrow, pandas, onnx, onnxruntime and scikit-learn are imported only by the command that needs
them (a CSV or Parquet table, ``linreg export``); what else a seed fit imports beyond a plain
Lightning script is linreg itself and jsonargparse (about 0.13 s, measured by
``python -m scripts.bench.startup``). scipy, matplotlib and tensorboard arrive with Lightning and
torchmetrics themselves, so they are not checked here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

OPTIONAL = ("pyarrow", "pandas", "onnx", "onnxruntime", "onnxscript", "sklearn")
# The names to look for ride as the last argument; linreg's main never sees them.
SCRIPT = """
import sys
from linreg.cli import main
main(sys.argv[1:-1])
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[-1].split(",")))
print("OPTIONAL_LOADED=" + ",".join(loaded))
"""


@pytest.mark.slow
def test_the_seed_fit_imports_no_optional_heavy_module(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["fit", f"--config={ROOT / 'configs' / 'seed.yaml'}", "--figures.enabled=false"]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args, ",".join(OPTIONAL)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("OPTIONAL_LOADED="))
    assert line == "OPTIONAL_LOADED=", line
