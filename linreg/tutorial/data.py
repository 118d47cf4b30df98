"""The tutorial's data: four training points on y = 2x, and x = 5 to predict.

Its own file because both the reference loops and the data module serve it, and neither should
import the other.
"""

import torch

X_TUTORIAL = torch.tensor([[1], [2], [3], [4]], dtype=torch.float32)
Y_TUTORIAL = torch.tensor([[2], [4], [6], [8]], dtype=torch.float32)
X_TEST_TUTORIAL = torch.tensor([[5]], dtype=torch.float32)
