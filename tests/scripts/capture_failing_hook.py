"""A loop whose optimizer has a learning rate the capture cannot read (float() raises); imports nothing
of this project. The capture's step hook fails at every step: training must go on regardless.

    python capture_failing_hook.py OUT_DIR
"""

import os
import sys

import torch


class Rate:
    """A learning rate as an object: the optimizer below multiplies by it, float() refuses it."""

    def __init__(self, value):
        self.value = value

    def __float__(self):
        raise TypeError("this learning rate is not a float")

    def __rmul__(self, other):
        return other * self.value


class Plain(torch.optim.Optimizer):
    def __init__(self, params):
        super().__init__(params, {"lr": Rate(0.1)})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                p -= p.grad * g["lr"]


torch.manual_seed(0)
model = torch.nn.Linear(2, 1)
opt = Plain(model.parameters())
x, y = torch.randn(8, 2), torch.randn(8, 1)
for _ in range(5):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
os.makedirs(sys.argv[1], exist_ok=True)
with open(os.path.join(sys.argv[1], "done.txt"), "w") as f:
    f.write("5 steps\n")
