"""A small Transformer encoder over a sliding window of scaled features. Imported only when used.

The scaler is fitted on the train segment only, and the windows of every window length
in `WINDOWS` are built once per study by `prepare`; trials only index into them. A
validation window may reach back into the gap rows before the validation segment: those
rows are in the past of the row being predicted, so no future information leaks.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tickertune.errors import ConfigError
from tickertune.metrics import accuracy, classification_metrics, log_loss
from tickertune.device import train_threads
from tickertune.models.base import FitResult, ParamSpace, Reporter
from tickertune.splits import Split

WINDOWS = (10, 20, 30)  # all <= features.LOOKBACK, so validation windows stay inside the gap
MAX_EPOCHS = 30
PATIENCE = 5
GRAD_CLIP = 1.0
EVAL_BATCH = 1024


@dataclass
class Scaler:
    """Per-feature standardisation, fitted on the training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Scaler":
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        return cls(mean=X.mean(axis=0), std=np.where(std > 0, std, 1.0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scaler":
        return cls(mean=np.asarray(d["mean"], dtype=np.float64),
                   std=np.asarray(d["std"], dtype=np.float64))


def make_windows(X_scaled: np.ndarray, rows: np.ndarray, window: int) -> np.ndarray:
    """The `window` rows ending at each of `rows` (inclusive): shape (len(rows), window, F)."""
    rows = np.asarray(rows, dtype=np.int64)
    n, n_features = X_scaled.shape
    if len(rows) and rows.min() - window + 1 < 0:
        raise ValueError(f"row {int(rows.min())} has fewer than {window} rows of history")
    if len(rows) and rows.max() >= n:
        raise ValueError(f"row {int(rows.max())} is beyond the last row {n - 1}")
    if n < window:
        return np.empty((0, window, n_features), dtype=np.float32)
    # view[i] is X_scaled[i : i + window] as (F, window); no copy until the gather below.
    view = np.lib.stride_tricks.sliding_window_view(X_scaled, window, axis=0)
    return np.ascontiguousarray(view[rows - window + 1].transpose(0, 2, 1), dtype=np.float32)


class DirectionTransformer(nn.Module):
    """Pre-norm Transformer encoder; the last time step's state gives the up-day logit."""

    def __init__(self, n_features: int, window: int, d_model: int, nhead: int,
                 num_layers: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.input = nn.Linear(n_features, d_model)
        self.pos = nn.Parameter(torch.zeros(1, window, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.window:
            raise ValueError(f"expected windows of {self.window} rows, got {x.shape[1]}")
        h = self.encoder(self.input(x) + self.pos)
        return self.head(self.norm(h[:, -1])).squeeze(-1)


def build_network(params: dict[str, Any], n_features: int) -> DirectionTransformer:
    return DirectionTransformer(
        n_features=n_features,
        window=int(params["window"]),
        d_model=int(params["d_model"]),
        nhead=int(params["nhead"]),
        num_layers=int(params["num_layers"]),
        dim_feedforward=int(params["dim_feedforward"]),
        dropout=float(params["dropout"]),
    )


@torch.no_grad()
def predict_proba(network: nn.Module, X_windows: np.ndarray | torch.Tensor,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """P(up) for each window, float64. `network` must already be on `device`.

    Training and serving both call this, with the same eval batches, so a reloaded
    model reproduces the training-time probabilities."""
    device = torch.device(device)
    X = torch.as_tensor(X_windows, dtype=torch.float32)
    was_training = network.training
    network.eval()
    try:
        logits = [network(X[i:i + EVAL_BATCH].to(device, non_blocking=True)).float()
                  for i in range(0, len(X), EVAL_BATCH)]
    finally:
        network.train(was_training)
    if not logits:
        return np.empty(0, dtype=np.float64)
    return torch.sigmoid(torch.cat(logits).double()).cpu().numpy()


@dataclass(frozen=True)
class WindowTensors:
    """Train and validation windows of one window length (CPU; pinned when training on CUDA)."""

    X_train: torch.Tensor  # (n_train, window, F) float32
    y_train: torch.Tensor  # (n_train,) float32
    X_val: torch.Tensor  # (n_val, window, F) float32, one per validation row
    y_val: torch.Tensor  # (n_val,) float32
    train_rows: np.ndarray


@dataclass
class PreparedTransformer:
    """Scaled windows for every window length, built once per study and shared read-only."""

    scaler: Scaler
    n_features: int
    feature_names: list[str]
    device: torch.device
    amp: bool
    windows: dict[int, WindowTensors]
    val_rows: np.ndarray  # feature-row indices of the validation segment
    y_val: np.ndarray  # int labels of val_rows

    def tensors(self, window: int) -> WindowTensors:
        if window not in self.windows:
            raise ValueError(f"window {window} was not prepared (prepared: {sorted(self.windows)})")
        return self.windows[window]


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu or cuda") from None


class TransformerModel:
    """Transformer encoder classifier; reports validation loss after every epoch."""

    name = "transformer"
    step_unit = "epoch"
    monitor = "val_loss"
    min_resource = 1
    max_resource = MAX_EPOCHS
    fixed_choices: dict[str, tuple[str, ...]] = {}  # device is --device
    reduction_factor = 4  # Hyperband: 3 brackets over 30 epochs (bench_pruning.py)

    def __init__(self, device: str = "auto") -> None:
        self.device = resolve_device(device)

    def suggest_params(self, space: ParamSpace) -> dict[str, Any]:
        p: dict[str, Any] = {
            "window": space.suggest_categorical("window", list(WINDOWS)),
            "d_model": space.suggest_categorical("d_model", [16, 32, 64]),
            "nhead": space.suggest_categorical("nhead", [2, 4]),
            "num_layers": space.suggest_int("num_layers", 1, 3),
            "dim_feedforward": space.suggest_categorical("dim_feedforward", [32, 64, 128]),
            "dropout": space.suggest_float("dropout", 0.0, 0.3),
            "lr": space.suggest_float("lr", 1e-4, 3e-3, log=True),
            "weight_decay": space.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            "batch_size": space.suggest_categorical("batch_size", [64, 128, 256]),
            "scheduler": space.suggest_categorical("scheduler", ["none", "step", "cosine"]),
        }
        if p["scheduler"] == "step":
            p["step_size"] = space.suggest_int("step_size", 2, 10)
            p["gamma"] = space.suggest_float("gamma", 0.3, 0.9)
        elif p["scheduler"] == "cosine":
            p["eta_min_ratio"] = space.suggest_float("eta_min_ratio", 0.01, 0.3, log=True)
        return p

    def fixed_params(self, seed: int) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "max_epochs": MAX_EPOCHS,
            "patience": PATIENCE,
            "grad_clip": GRAD_CLIP,
            "seed": seed,
            "device": self.device.type,
            "amp": cuda,
            # One core is left to the tracking writer and the tuner: on a shared 2-core
            # machine two torch threads stall badly whenever another process runs.
            "num_threads": train_threads(),
        }

    def prepare(self, split: Split, windows: tuple[int, ...] = WINDOWS) -> PreparedTransformer:
        X = split.features.X.to_numpy(np.float64)
        y = np.asarray(split.features.y)
        scaler = Scaler.fit(X[split.train.rows])
        Xs = scaler.transform(X)
        val_rows = np.arange(split.val.start, split.val.stop)
        pin = self.device.type == "cuda"

        def tensor(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            return t.pin_memory() if pin else t

        built = {}
        for w in windows:
            train_rows = np.arange(max(split.train.start, w - 1), split.train.stop)
            built[w] = WindowTensors(
                X_train=tensor(make_windows(Xs, train_rows, w)),
                y_train=tensor(y[train_rows]),
                X_val=tensor(make_windows(Xs, val_rows, w)),
                y_val=tensor(y[val_rows]),
                train_rows=train_rows,
            )
        return PreparedTransformer(
            scaler=scaler, n_features=X.shape[1], feature_names=split.features.names,
            device=self.device, amp=pin, windows=built, val_rows=val_rows,
            y_val=y[val_rows].astype(np.int64),
        )

    def fit(self, params: dict[str, Any], prepared: PreparedTransformer,
            reporter: Reporter) -> FitResult:
        p = {**self.fixed_params(int(params.get("seed", 0))), **params}
        threads = torch.get_num_threads()
        torch.set_num_threads(int(p["num_threads"]))
        try:
            return self._fit(p, prepared, reporter)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, p: dict[str, Any], prepared: PreparedTransformer,
             reporter: Reporter) -> FitResult:
        device = prepared.device
        data = prepared.tensors(int(p["window"]))
        max_epochs, patience = int(p["max_epochs"]), int(p["patience"])
        batch_size, grad_clip = int(p["batch_size"]), float(p["grad_clip"])

        seed = int(p["seed"])
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)
        gen = torch.Generator().manual_seed(seed)  # the shuffles only, independent of dropout

        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        amp_dtype = None
        if cuda and p["amp"]:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        ctx = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()
        # bfloat16 has float32's exponent range; only float16 needs loss scaling.
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        net = build_network(p, prepared.n_features).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=float(p["lr"]),
                                weight_decay=float(p["weight_decay"]))
        sched = _make_scheduler(opt, p, max_epochs)
        loss_fn = nn.BCEWithLogitsLoss()
        y_val = prepared.y_val

        best_loss, best_epoch, best_state, bad, epoch = float("inf"), 0, None, 0, 0
        utilisation: list[float] = []  # GPU busy %, sampled at the end of each epoch
        for epoch in range(1, max_epochs + 1):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            net.train()
            total = torch.zeros((), device=device)
            perm = torch.randperm(len(data.y_train), generator=gen)
            for xb, yb in _shuffled_batches(data.X_train, data.y_train, perm, batch_size, device):
                with ctx:
                    loss = loss_fn(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
                scaler.step(opt)
                scaler.update()
                total += loss.detach().float() * len(yb)
            if sched is not None:
                sched.step()

            if cuda:
                from tickertune.device import gpu_utilization

                util = gpu_utilization(device.index or 0)
                if util is not None:
                    utilisation.append(util)
            proba = predict_proba(net, data.X_val, device)
            val_loss = log_loss(y_val, proba)
            if val_loss < best_loss:
                best_loss, best_epoch, bad = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
            reporter(epoch, {
                "train_loss": float(total.item()) / max(len(data.y_train), 1),
                "val_loss": val_loss,
                "val_accuracy": accuracy(y_val, proba),
                "lr": float(lr),
                "seconds": time.perf_counter() - t0,
            })
            if bad >= patience:
                break

        if best_state is not None:  # None only when every epoch's val loss was NaN
            net.load_state_dict(best_state)
        model = net.cpu().eval()
        # Scored on CPU, as serving will: a reloaded model reproduces these probabilities.
        proba = predict_proba(model, data.X_val, "cpu")
        m = classification_metrics(y_val, proba)
        extra: dict[str, Any] = {"val_proba": proba, "window": int(p["window"]), "params": p}
        if cuda:
            extra["device_metrics"] = {
                "device.peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}
            if utilisation:
                extra["device_metrics"]["device.gpu_utilization_pct"] = float(np.mean(utilisation))
                extra["device_metrics"]["device.gpu_utilization_max_pct"] = float(np.max(utilisation))
        metrics = {
            "val_logloss": m["logloss"],
            "val_accuracy": m["accuracy"],
            "val_auc": m["auc"],
            "best_epoch": float(best_epoch),
            "epochs": float(epoch),
        }
        return FitResult(value=m["logloss"], metrics=metrics, steps=epoch, model=model, extra=extra)


    def export(self, fit: FitResult, prepared: PreparedTransformer, out_dir: Path) -> dict[str, Any]:
        """Write the weights into `out_dir`; return the pipeline fields `Predictor` needs."""
        torch.save(fit.model.state_dict(), out_dir / "weights.pt")
        arch = ("window", "d_model", "nhead", "num_layers", "dim_feedforward", "dropout")
        return {
            "weights": "weights.pt",
            "window": int(fit.extra["window"]),
            "architecture": {k: fit.extra["params"][k] for k in arch},
            "scaler": prepared.scaler.to_dict(),
        }


class Predictor:
    """Saved weights + scaler + window that score feature rows (see tickertune.predictor)."""

    def __init__(self, model_dir: Path, pipeline: dict[str, Any]) -> None:
        self.features = list(pipeline["features"])
        self.window = int(pipeline["window"])
        self.scaler = Scaler.from_dict(pipeline["scaler"])
        self.network = build_network(pipeline["architecture"], len(self.features))
        state = torch.load(Path(model_dir) / pipeline["weights"], map_location="cpu", weights_only=True)
        self.network.load_state_dict(state)
        self.network.eval()

    def predict_proba(self, X: pd.DataFrame) -> pd.Series:
        Xs = self.scaler.transform(X[self.features].to_numpy(dtype=np.float64))
        rows = np.arange(self.window - 1, len(Xs))
        p = predict_proba(self.network, make_windows(Xs, rows, self.window), "cpu")
        return pd.Series(p, index=X.index[rows], name="p_up")


def _make_scheduler(opt: torch.optim.Optimizer, p: dict[str, Any],
                    max_epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    kind = p.get("scheduler", "none")
    if kind == "none":
        return None
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=int(p["step_size"]),
                                               gamma=float(p["gamma"]))
    if kind == "cosine":
        eta_min = float(p["lr"]) * float(p["eta_min_ratio"])
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs, eta_min=eta_min)
    raise ValueError(f"unknown scheduler {kind!r}")


def _shuffled_batches(X: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch_size: int,
                      device: torch.device):
    """Minibatches of (X, y) in `perm` order, on `device`.

    One gather per epoch, then contiguous slices. On CUDA the gather lands in pinned
    memory (indexing a pinned tensor would return pageable memory), so the per-batch
    copies can be asynchronous; the caching host allocator keeps each buffer alive
    until its copies have finished."""
    if device.type == "cuda":
        Xs = torch.empty(X.shape, dtype=X.dtype, pin_memory=True)
        ys = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        torch.index_select(X, 0, perm, out=Xs)
        torch.index_select(y, 0, perm, out=ys)
    else:
        Xs, ys = X[perm], y[perm]
    for i in range(0, len(perm), batch_size):
        yield (Xs[i:i + batch_size].to(device, non_blocking=True),
               ys[i:i + batch_size].to(device, non_blocking=True))
