"""Start-up: the seed fit as a whole process against a raw torch script and a plain Lightning script (issue 24).

Whole-process walls, interleaved so a burst of load hits every command alike, median of ``--repeats``:

- ``linreg fit --config configs/seed.yaml`` (the tutorial's stage 4 through linreg: 100 one-step epochs,
  TensorBoard log, figures, checkpoint), and the same with ``--figures.enabled false``;
- the raw torch script of the same 100 steps (RAW_SEED_SCRIPT) and ``scripts/tutorial.py`` (the
  tutorial's four stages, torch only);
- the same job the plain Lightning way (PLAIN_LIGHTNING_SCRIPT: LightningModule, DataLoader, Trainer
  with the TensorBoard logger and a checkpoint);
- ``python -c pass`` and ``import torch`` alone, the floor under all of them.

One more linreg run under ``python -X importtime`` gives the import seconds per top-level package and
which package first pulled each one in.

Usage: ``python -m scripts.bench.startup [--repeats N] [--tiny] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.bench.common import ROOT, SEED_CONFIG, linreg_command, run_main, run_process

# The tutorial's stage 4 as a plain script: what `linreg fit --config configs/seed.yaml` does, minus Lightning.
RAW_SEED_SCRIPT = """
import sys, torch
from torch import nn
torch.manual_seed(0)
X = torch.tensor([[1.0], [2.0], [3.0], [4.0]]); Y = 2 * X
model = nn.Linear(1, 1); loss_fn = nn.MSELoss(); opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(100):
    loss = loss_fn(model(X), Y); loss.backward(); opt.step(); opt.zero_grad()
torch.save(model.state_dict(), sys.argv[1])
print(f"f(5) = {model(torch.tensor([[5.0]])).item():.3f}")
"""

# The same job the plain Lightning way (issue 11's yardstick for linreg's start-up).
PLAIN_LIGHTNING_SCRIPT = """
import torch, lightning as L
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
class Plain(L.LightningModule):
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(1, 1)
    def forward(self, x):
        return self.lin(x)
    def training_step(self, batch, batch_idx):
        x, y = batch; loss = nn.functional.mse_loss(self(x), y); self.log("train/loss", loss); return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)
L.seed_everything(0)
X = torch.tensor([[1.0], [2.0], [3.0], [4.0]]); Y = 2 * X
model = Plain()
trainer = L.Trainer(max_epochs=100, logger=L.pytorch.loggers.TensorBoardLogger("."), enable_progress_bar=False,
                    enable_model_summary=False, log_every_n_steps=1)
trainer.fit(model, DataLoader(TensorDataset(X, Y), batch_size=4))
print(f"f(5) = {model(torch.tensor([[5.0]])).item():.3f}")
"""


def _flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=None, help="runs of each command (default 5; --tiny 1)")


def commands(tmp: Path) -> dict[str, list[str]]:
    seed_fit = [*linreg_command(), "fit", f"--config={SEED_CONFIG}"]
    return {
        "linreg seed fit": seed_fit,
        "linreg seed fit, no figures": [*seed_fit, "--figures.enabled=false"],
        "raw torch script": [sys.executable, "-c", RAW_SEED_SCRIPT, str(tmp / "raw.pt")],
        "tutorial's four stages": [sys.executable, str(ROOT / "scripts" / "tutorial.py")],
        "plain Lightning script": [sys.executable, "-c", PLAIN_LIGHTNING_SCRIPT],
        "import torch": [sys.executable, "-c", "import torch"],
        "python": [sys.executable, "-c", "pass"],
    }


def import_profile(stderr: str, top: int = 12) -> list[dict[str, Any]]:
    """Self import time per top-level package, and which package first pulled it in (python -X importtime)."""
    entries: list[tuple[str, int, float]] = []  # (package, depth, self seconds), in the order printed (post-order)
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].split(":")[1].strip().isdigit():
            continue
        depth = (len(parts[2]) - len(parts[2].lstrip(" ")) - 1) // 2
        entries.append((parts[2].strip().split(".")[0], depth, int(parts[0].split(":")[1]) / 1e6))
    parent: dict[int, int] = {}
    waiting: dict[int, list[int]] = {}
    for i, (_, depth, _) in enumerate(entries):  # a child is printed before its parent, one level deeper
        for child in waiting.pop(depth + 1, []):
            parent[child] = i
        waiting.setdefault(depth, []).append(i)
    seconds: dict[str, float] = {}
    via: dict[str, str] = {}
    for i, (package, _, self_s) in enumerate(entries):
        seconds[package] = seconds.get(package, 0.0) + self_s
        j = i
        while j in parent and entries[j][0] == package:
            j = parent[j]
        if package not in via:
            via[package] = entries[j][0] if entries[j][0] != package else "(main)"
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": p, "self_s": s, "imported_by": via[p]} for p, s in ranked] + [
        {"package": "(all)", "self_s": sum(seconds.values()), "imported_by": ""}
    ]


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    repeats = opts.repeats or (1 if opts.tiny else 5)
    with tempfile.TemporaryDirectory(prefix="linreg-bench-startup-") as name:
        tmp = Path(name)
        cmds = commands(tmp)
        if opts.tiny:  # the goals' three commands only: each process pays torch's import, seconds apiece
            cmds = {
                k: v for k, v in cmds.items() if k in ("linreg seed fit", "raw torch script", "plain Lightning script")
            }
        walls: dict[str, list[float]] = {label: [] for label in cmds}
        for i in range(repeats):
            for label, cmd in cmds.items():
                walls[label].append(run_process(cmd, tmp / f"{i}-{len(walls[label])}-{label.replace(' ', '_')}")[0])
        seed_fit = ["fit", f"--config={SEED_CONFIG}"]
        _, stderr = run_process([sys.executable, "-X", "importtime", "-m", "linreg.cli", *seed_fit], tmp / "imp")
    s = {label: statistics.median(w) for label, w in walls.items()}
    return {
        "repeats": repeats,
        "seconds": s,
        "all_seconds": walls,
        "over_raw_script": s["linreg seed fit"] / s["raw torch script"],
        "over_four_stages": s["linreg seed fit"] / s.get("tutorial's four stages", float("nan")),
        "over_plain_lightning": s["linreg seed fit"] / s["plain Lightning script"],
        "import_profile": import_profile(stderr),
    }


def report(r: dict[str, Any]) -> None:
    print(f"start-up, whole processes, median of {r['repeats']} (s):")
    for label, s in r["seconds"].items():
        print(f"  {s:7.2f}  {label}")
    print(
        f"  seed fit / raw torch script {r['over_raw_script']:.2f} (goal <= 1.3); / the four stages "
        f"{r['over_four_stages']:.2f}; / plain Lightning script {r['over_plain_lightning']:.2f} (goal <= 1.0)"
    )
    imports = ", ".join(f"{e['package']} {e['self_s']:.2f} ({e['imported_by']})" for e in r["import_profile"][:-1])
    print(f"  import s by package (first imported by), {r['import_profile'][-1]['self_s']:.2f} s in all: {imports}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main(__doc__, 0, 0, measure, report, argv, _flags)


if __name__ == "__main__":
    main()
