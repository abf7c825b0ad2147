#!/usr/bin/env python
"""Training throughput of TransformerModel.fit against a bare torch loop, side by side.

Both arms train the same DirectionTransformer (window 30, d_model 32, 4 heads, 2 layers,
feed-forward 64, dropout 0.1, batch 64, AdamW lr 1e-3, no scheduler) on the same
prepared AAPL tensors for exactly `--epochs` epochs, with the same loss, gradient
clipping and per-epoch validation pass. "ours" is `TransformerModel.fit` with a no-op
reporter (seeding, timing, best-state copies, the final scoring included); "bare" is a
plain `for` loop over shuffled minibatches. The arms alternate for `--reps` repetitions
and the medians are compared. Target: ours / bare >= 0.9 in samples per second.

    python scripts/bench_training.py [--epochs 5] [--reps 3] [--ticker AAPL] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

PARAMS = {
    "window": 30, "d_model": 32, "nhead": 4, "num_layers": 2, "dim_feedforward": 64,
    "dropout": 0.1, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "scheduler": "none",
}
TARGET = 0.9


def ours(model, prepared, params: dict) -> float:
    t0 = time.perf_counter()
    model.fit(params, prepared, lambda step, metrics: None)
    return time.perf_counter() - t0


def bare(prepared, params: dict) -> float:
    """The textbook loop: same network, data, optimizer, loss, clipping and val pass."""
    import numpy as np
    import torch
    from torch import nn

    from tickertune.models.transformer import build_network

    t0 = time.perf_counter()
    device = prepared.device
    data = prepared.windows[params["window"]]
    torch.manual_seed(params["seed"])
    gen = torch.Generator().manual_seed(params["seed"])
    net = build_network(params, prepared.n_features).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    loss_fn = nn.BCEWithLogitsLoss()
    n, bs = len(data.y_train), params["batch_size"]
    for _ in range(params["max_epochs"]):
        net.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = data.X_train[idx].to(device), data.y_train[idx].to(device)
            loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), params["grad_clip"])
            opt.step()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(data.X_val[i:i + 1024].to(device))
                                for i in range(0, len(data.X_val), 1024)])
        p = np.clip(torch.sigmoid(logits.double()).cpu().numpy(), 1e-15, 1 - 1e-15)
        y = prepared.y_val
        float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ticker", default="AAPL")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()

    import torch

    from tickertune.data import load_bars
    from tickertune.features import build_features
    from tickertune.models.transformer import TransformerModel
    from tickertune.splits import chronological_split

    if args.threads:
        torch.set_num_threads(args.threads)
    split = chronological_split(build_features(load_bars(args.ticker).frame))
    model = TransformerModel(args.device)
    prepared = model.prepare(split, windows=(PARAMS["window"],))
    params = {**model.fixed_params(args.seed), **PARAMS,
              "max_epochs": args.epochs, "patience": 10**9}
    n_train = len(prepared.windows[PARAMS["window"]].y_train)
    samples = n_train * args.epochs

    ours(model, prepared, {**params, "max_epochs": 1})  # warm up allocators and kernels
    bare(prepared, {**params, "max_epochs": 1})
    secs: dict[str, list[float]] = {"ours": [], "bare": []}
    for rep in range(args.reps):
        for arm in (("ours", "bare") if rep % 2 == 0 else ("bare", "ours")):
            s = ours(model, prepared, params) if arm == "ours" else bare(prepared, params)
            secs[arm].append(s)
            print(f"rep {rep + 1} {arm}  {s:7.2f} s  {samples / s:9.0f} samples/s", file=sys.stderr)

    med = {arm: statistics.median(v) for arm, v in secs.items()}
    ratio = med["bare"] / med["ours"]  # = ours samples/s over bare samples/s
    print(f"\nTransformer training on {args.ticker}: {n_train} train windows x {args.epochs} epochs, "
          f"device {prepared.device}, {torch.get_num_threads()} threads, "
          f"median of {args.reps} alternating reps\n")
    print(f"{'arm':<6}{'samples/s':>12}{'seconds':>10}")
    for arm in ("ours", "bare"):
        print(f"{arm:<6}{samples / med[arm]:>12.0f}{med[arm]:>10.2f}")
    print(f"\nours / bare = {ratio:.3f}; target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
