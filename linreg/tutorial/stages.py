"""The tutorial's four training loops, kept verbatim in spirit, as the yardstick for the Lightning pipeline.

Each stage returns a ``History`` instead of only printing, so tests can compare numbers and
``scripts/tutorial.py`` can print the transcript. ``fit_manual`` is stage 4's loop generalised
(mini-batches, momentum, weight decay): the parity tests run it from the Lightning module's own
initial weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from linreg.model import LinearRegression
from linreg.tutorial.data import X_TUTORIAL, Y_TUTORIAL


@dataclass
class History:
    """Per-epoch loss (before the update, as the tutorial prints it) and w, b after the update."""

    before: float
    after: float
    print_every: int
    losses: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    biases: list[float] = field(default_factory=list)

    def transcript(self) -> list[str]:
        """The tutorial's printed lines, character for character."""
        lines = [f"Prediction before training: f(5) = {self.before:.3f}"]
        for epoch, (w, loss) in enumerate(zip(self.weights, self.losses)):
            if epoch % self.print_every == 0:
                lines.append(f"epoch {epoch + 1}: w = {w:.3f}, loss = {loss:.8f}")
        lines.append(f"Prediction after training: f(5) = {self.after:.3f}")
        return lines


def stage1_manual_gradient(learning_rate: float = 0.1, n_iters: int = 20) -> History:
    """Stage 1: prediction, loss and update written by hand; autograd only for dl/dw."""
    X, Y = X_TUTORIAL.flatten(), Y_TUTORIAL.flatten()
    w = torch.tensor(0.0, dtype=torch.float32, requires_grad=True)

    def forward(x: Tensor | float) -> Tensor:
        return w * x

    def loss(y: Tensor, y_predicted: Tensor) -> Tensor:
        return ((y_predicted - y) ** 2).mean()

    history = History(before=forward(5).item(), after=0.0, print_every=1)
    for _ in range(n_iters):
        l = loss(Y, forward(X))  # noqa: E741 (the tutorial's name)
        l.backward()  # type: ignore[no-untyped-call]
        grad = w.grad
        assert grad is not None  # backward() just filled it
        with torch.no_grad():
            w -= grad * learning_rate
        grad.zero_()
        history.losses.append(l.item())
        history.weights.append(w.item())
        history.biases.append(0.0)
    history.after = forward(5).item()
    return history


def stage2_loss_and_optimizer(learning_rate: float = 0.01, n_iters: int = 100) -> History:
    """Stage 2: the same model, with ``nn.MSELoss`` and ``torch.optim.SGD`` replacing the hand-written parts."""
    X, Y = X_TUTORIAL.flatten(), Y_TUTORIAL.flatten()
    w = torch.tensor(0.0, dtype=torch.float32, requires_grad=True)
    loss = nn.MSELoss()
    optimizer = torch.optim.SGD([w], lr=learning_rate)
    history = History(before=(w * 5).item(), after=0.0, print_every=10)
    for _ in range(n_iters):
        l = loss(Y, w * X)  # noqa: E741
        l.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.losses.append(l.item())
        history.weights.append(w.item())
        history.biases.append(0.0)
    history.after = (w * 5).item()
    return history


def fit_manual(
    model: nn.Module,
    X: Tensor,
    Y: Tensor,
    lr: float = 0.01,
    epochs: int = 100,
    batch_size: int | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    l2: float = 0.0,
    l1: float = 0.0,
    print_every: int = 10,
) -> History:
    """Stages 3 and 4's loop: forward, ``nn.MSELoss``, backward, ``SGD.step``, in order, no shuffling.

    The epoch loss is the row-weighted mean of the batch losses, summed in float64 and rounded once
    to float32, so a full-batch epoch reports the float32 batch loss exactly (Lightning's logged
    epoch loss is computed the same way). Penalties (not in the tutorial): ``l2·‖W‖²`` joins the loss
    before ``backward``; ``l1·‖W‖₁`` joins the reported loss, and its step is the proximal one,
    a soft-threshold of W by lr·l1 after each update. The intercept is never penalized.
    """
    loss = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = X.shape[0]
    batch_size = batch_size or n
    x_test = torch.full((1, X.shape[1]), 5.0)
    with torch.no_grad():
        history = History(before=model(x_test)[0, 0].item(), after=0.0, print_every=print_every)
    for _ in range(epochs):
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, batch_size):
            x, y = X[start : start + batch_size], Y[start : start + batch_size]
            weight = next(model.parameters())  # nn.Linear's weight, then its bias
            l = loss(model(x), y)  # noqa: E741
            if l2:
                l = l + l2 * weight.pow(2).sum()  # noqa: E741
            reported = l.detach() + l1 * weight.detach().abs().sum() if l1 else l.detach()
            l.backward()
            optimizer.step()
            optimizer.zero_grad()
            if l1:
                with torch.no_grad():
                    weight.copy_(nn.functional.softshrink(weight, lr * l1))
            total += reported.double() * x.shape[0]
        history.losses.append((total / n).float().item())
        w, b = model.parameters()
        history.weights.append(w.detach().flatten()[0].item())
        history.biases.append(b.detach().flatten()[0].item())
    with torch.no_grad():
        history.after = model(x_test)[0, 0].item()
    return history


def stage3_nn_linear(learning_rate: float = 0.01, n_iters: int = 100, seed: int = 0) -> History:
    """Stage 3: ``nn.Linear`` replaces the hand-written forward; seeded, so the transcript is deterministic."""
    torch.manual_seed(seed)
    model = nn.Linear(1, 1)
    return fit_manual(model, X_TUTORIAL, Y_TUTORIAL, lr=learning_rate, epochs=n_iters)


def stage4_custom_module(learning_rate: float = 0.01, n_iters: int = 100, seed: int = 0) -> History:
    """Stage 4: the custom ``LinearRegression`` module that the Lightning pipeline wraps."""
    torch.manual_seed(seed)
    model = LinearRegression(1, 1)
    return fit_manual(model, X_TUTORIAL, Y_TUTORIAL, lr=learning_rate, epochs=n_iters)
