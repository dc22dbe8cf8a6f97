"""A plain PyTorch loop written from the README's API section: nn.Sequential, DataLoader(shuffle=True), SGD."""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from provenance import DatasetSpec, start_run

spec = DatasetSpec(name="toy", root="data/toy", files=["toy.csv"], source={"type": "local"},
                   license="CC0-1.0", samples_file="toy.csv")
if not (spec.root / "toy.csv").is_file():  # a small local dataset (in a reproduction: staged under PROV_DATA_ROOT)
    spec.root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    rows = [[*r, float(r[0] + r[1] > 0)] for r in x.tolist()]
    (spec.root / "toy.csv").write_text("".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in rows))
data = torch.tensor([[float(v) for v in line.split(",")] for line in (spec.root / "toy.csv").read_text().split()])
dataset = TensorDataset(torch.arange(len(data)), data[:, :4], data[:, 4:])

with start_run({"lr": 0.1, "epochs": 2, "batch_size": 16}, name="plain", seed=0, threads=1, datasets=[spec],
               license="Apache-2.0") as run:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(dataset, batch_size=16, shuffle=True)
    step = 0
    for _epoch in range(2):
        for ids, xb, yb in loader:
            step += 1
            run.record_batch(step, ids.tolist())
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(step, loss=loss.item())
        run.checkpoint(step, model, opt)
    run.save_model(model, init_args={"layers": [4, 8, 1]})
print(f"run: {run.root}", file=sys.stderr)
