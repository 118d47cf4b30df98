"""GPU check for a machine with a CUDA GPU (run by scripts/gpu_check.sh; about 2-4 minutes).

1. The seed config through the real CLI on the GPU and on the CPU: same w and b.
2. A generated 10M × 64 float32 table fitted by linreg on the GPU (data resident on the GPU) and, for
   the same initial weights, on the CPU: max |Δ| of the weights after one epoch.
3. Throughput: linreg's GPU fit against a raw PyTorch slice loop on the same GPU, and against the
   card's copy bandwidth (what one pass over X can cost at best).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from linreg.data.datamodule import LinRegData
from linreg.training.module import LinRegModule

ROOT = Path(__file__).resolve().parents[1]
N, D, BATCH = 10_000_000, 64, 65_536


def cli_fit(accelerator: str, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "linreg.cli",
        "fit",
        "--config",
        str(ROOT / "configs/seed.yaml"),
        "--trainer.accelerator",
        accelerator,
        "--figures.enabled",
        "false",
    ]
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    ckpt = next(cwd.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    return {"w": state["model.lin.weight"].item(), "b": state["model.lin.bias"].item()}


def linreg_fit(X: torch.Tensor, y: torch.Tensor, accelerator: str, epochs: int) -> tuple[LinRegModule, float]:
    """linreg's module and data module under a lean Trainer; returns the model and seconds per epoch."""
    torch.manual_seed(0)
    model = LinRegModule(D, 1, lr=0.01)
    data = LinRegData.from_tensors(X, y, batch_size=BATCH, shuffle="none")
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    if accelerator == "gpu":
        torch.cuda.synchronize()
    return model, (time.perf_counter() - start) / epochs


def raw_loop(X: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    lin = torch.nn.Linear(D, 1).to(X.device)
    opt = torch.optim.SGD(lin.parameters(), lr=0.01)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        for s in range(0, X.shape[0], BATCH):
            loss = torch.nn.functional.mse_loss(lin(X[s : s + BATCH]), y[s : s + BATCH])
            loss.backward()
            opt.step()
            opt.zero_grad()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def copy_bandwidth(X: torch.Tensor) -> float:
    """Bytes per second of a device-to-device copy (read + write), the card's practical bandwidth."""
    out = torch.empty_like(X)
    out.copy_(X)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        out.copy_(X)
    torch.cuda.synchronize()
    return 2 * X.numel() * X.element_size() * 5 / (time.perf_counter() - start)


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA GPU visible"
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gpu").mkdir()
        (Path(tmp) / "cpu").mkdir()
        gpu, cpu = cli_fit("gpu", Path(tmp) / "gpu"), cli_fit("cpu", Path(tmp) / "cpu")
    report["seed"] = {"gpu": gpu, "cpu": cpu, "max_abs_diff": max(abs(gpu["w"] - cpu["w"]), abs(gpu["b"] - cpu["b"]))}
    print("seed config:", report["seed"], flush=True)

    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g)
    y = X @ torch.randn(D, 1, generator=g) + 0.5 + 0.1 * torch.randn(N, 1, generator=g)
    cpu_model, cpu_epoch = linreg_fit(X, y, "cpu", epochs=1)
    Xg, yg = X.cuda(), y.cuda()
    gpu_model, _ = linreg_fit(Xg, yg, "gpu", epochs=1)
    diff = max(
        (a.detach().cpu() - b.detach().cpu()).abs().max().item()
        for a, b in zip(gpu_model.model.parameters(), cpu_model.model.parameters())
    )
    _, gpu_epoch = linreg_fit(Xg, yg, "gpu", epochs=3)
    raw_epoch = raw_loop(Xg, yg, epochs=3)
    bandwidth = copy_bandwidth(Xg)
    bytes_per_epoch = Xg.numel() * 4 + yg.numel() * 4
    report["table"] = {
        "rows": N,
        "features": D,
        "batch": BATCH,
        "max_abs_diff_gpu_vs_cpu_after_1_epoch": diff,
        "cpu_rows_per_s": N / cpu_epoch,
        "linreg_gpu_rows_per_s": N / gpu_epoch,
        "raw_gpu_rows_per_s": N / raw_epoch,
        "linreg_over_raw": raw_epoch / gpu_epoch,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "linreg_read_GBps": bytes_per_epoch / gpu_epoch / 1e9,
        "linreg_fraction_of_bandwidth": bytes_per_epoch / gpu_epoch / bandwidth,
    }
    for key, value in report["table"].items():
        print(f"{key:<40} {value:.4g}" if isinstance(value, float) else f"{key:<40} {value}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
