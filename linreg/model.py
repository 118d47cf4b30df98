"""The tutorial's stage-4 model: a custom ``nn.Module`` around one ``nn.Linear``."""

from torch import Tensor, nn


class LinearRegression(nn.Module):
    """y = x Wᵀ + b, kept as its own module so the manual loop and Lightning train the very same thing."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.lin(x)
        return out
