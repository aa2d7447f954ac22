"""Samples/s of the site's periodic mini-batch step against a bare torch loop on the same model.

Platform: ``TorchMLPLearner.train_steps`` drawing each batch from a filled ``ReplayBuffer`` (the
code a site runs every ``step_every_records`` rows): sample live rows, copy them (pinned on cuda) to
the device, forward, BCE loss, backward, Adam step, one device sync per call.
Bare: the same network, loss, optimizer and batch size; the rows already in host memory as one
torch tensor; each step indexes a random batch with ``torch.randint``, moves it to the device and
steps; one sync at the end. Both count samples over the same number of steps, interleaved. On CPU
the bare loop also runs with one intra-op thread ("bare, 1 thread"), since the platform runs small
CPU steps on one thread; "ratio vs best bare" divides by the faster of the two.

Runs on cuda when available (``--device`` to force), else on CPU. Models: the ``fraud`` topology's
MLP (14 -> 8 -> 1, batch 2,048, as shipped) and two wider ones, where the device's arithmetic rather
than Python decides the step time.

    python benchmarks/gpu_step.py             # 3 models x 3 repetitions (~1-2 min on CPU)
    python benchmarks/gpu_step.py --quick     # 2 models, 1 repetition (< 30 s)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, median, ratio, spread, table

from streamfed.learners.torch_mlp import ReplayBuffer, TorchMLPLearner, pick_device

DIM = 14  # the fraud topology's feature count


def configs(device: torch.device, quick: bool) -> list[tuple[str, list[int], int]]:
    big_batch = 65_536 if device.type == "cuda" else 4_096
    out = [("fraud MLP 14-8-1", [8], 2_048), ("MLP 14-256-256-1", [256, 256], 8_192)]
    if not quick:
        out.append(("MLP 14-1024-1024-1", [1024, 1024], big_batch))
    return out


def data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, DIM)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=rows) > 1.0).astype(np.float32)
    return X, y


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def platform_run(
    device: torch.device, hidden: list[int], batch: int, X: np.ndarray, y: np.ndarray, steps: int
) -> float:
    learner = TorchMLPLearner(DIM, hidden, 1e-3, str(device), seed=0)
    buf = ReplayBuffer(DIM, len(X))
    buf.add(X, y, window=1)
    rng = np.random.default_rng(1)
    learner.train_steps(buf, 2, batch, rng)  # warm-up (allocator, kernels)
    sync(device)
    t0 = time.perf_counter()
    seen = learner.train_steps(buf, steps, batch, rng)
    sync(device)
    return seen / (time.perf_counter() - t0)


def bare_run(
    device: torch.device, hidden: list[int], batch: int, X: np.ndarray, y: np.ndarray, steps: int, threads: int = 0
) -> float:
    """The bare loop; ``threads`` > 0 sets torch's intra-op threads for the run (0: leave torch's default)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bare(device, hidden, batch, X, y, steps)
    finally:
        torch.set_num_threads(before)


def _bare(device: torch.device, hidden: list[int], batch: int, X: np.ndarray, y: np.ndarray, steps: int) -> float:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    prev = DIM
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    net = nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        idx = torch.randint(len(xt), (batch,), generator=gen)
        xb = xt[idx].to(device, non_blocking=True)
        yb = yt[idx].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb).squeeze(-1), yb)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def calibrate(
    device: torch.device, hidden: list[int], batch: int, X: np.ndarray, y: np.ndarray, budget_s: float
) -> int:
    """Steps that take about ``budget_s`` in the bare loop (at least 3)."""
    rate = bare_run(device, hidden, batch, X, y, 3)
    return max(3, int(budget_s * rate / batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two models, 1 repetition (CI smoke test)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--reps", type=int, default=None, help="repetitions, interleaved (default 3; quick 1)")
    ap.add_argument("--seconds", type=float, default=None, help="time per measurement (default 3; quick 0.5)")
    args = ap.parse_args()
    device = pick_device(args.device)
    reps = args.reps or (1 if args.quick else 3)
    budget = args.seconds or (0.5 if args.quick else 3.0)
    header(f"gpu_step: samples/s of the periodic mini-batch step vs a bare torch loop ({device})", args)
    if device.type == "cuda":
        print(f"device    {torch.cuda.get_device_name(device)}\n")
    else:
        print(f"device    cpu, torch threads {torch.get_num_threads()}\n")

    rows, ratios, ratios_best = [], {}, {}
    for name, hidden, batch in configs(device, args.quick):
        rows_in_memory = max(20_000, 4 * batch)
        X, y = data(rows_in_memory)
        steps = calibrate(device, hidden, batch, X, y, budget)
        plat, bare, bare1 = [], [], []
        for _ in range(reps):
            plat.append(platform_run(device, hidden, batch, X, y, steps))
            bare.append(bare_run(device, hidden, batch, X, y, steps))
            if device.type == "cpu":  # a tuned bare loop: one intra-op thread, as the platform uses for small steps
                bare1.append(bare_run(device, hidden, batch, X, y, steps, threads=1))
        paired = median([p / b for p, b in zip(plat, bare, strict=True)])
        ratios[name] = paired
        best = [max(b, b1) for b, b1 in zip(bare, bare1, strict=True)] if bare1 else bare
        ratios_best[name] = median([p / b for p, b in zip(plat, best, strict=True)])
        step_ms = 1000 * batch / median(plat)
        rows.append(
            [
                name,
                batch,
                steps,
                median(plat),
                spread(plat),
                median(bare),
                median(bare1) if bare1 else float("nan"),
                step_ms,
                paired,
                ratios_best[name],
            ]
        )
        print(f"{name}: platform {median(plat):,.0f}/s, bare {median(bare):,.0f}/s", flush=True)
    print()
    table(
        [
            "model",
            "batch",
            "steps",
            "platform samples/s",
            f"min..max of {reps}",
            "bare torch samples/s",
            "bare, 1 thread",
            "platform ms/step",
            "ratio",
            "ratio vs best bare",
        ],
        rows,
    )
    for name, r in ratios.items():
        ratio(f"platform_step/bare_torch[{device.type}, {name}]", r, ">= 0.8")
        ratio(f"platform_step/best_bare_torch[{device.type}, {name}]", ratios_best[name])


if __name__ == "__main__":
    main()
