"""Two processes against one on the CPU (gloo): samples/s and the equality of the loss.

The same global batch (``--batch`` pairs) trains a bound audio encoder with binder's training step
(encoder, all-gathered symmetric InfoNCE, backward, gradients averaged as DDP does, AdamW) either
in one process, or split over two gloo processes of ``--batch / 2`` pairs each, starting from the
same weights. It prints samples/s of both and the largest difference of the loss over the steps
(the all-gather makes the two-process loss the one-process loss of the global batch; drop path
is off, so that no per-process randomness tells them apart).

    python benchmarks/ddp_cpu.py --batch 64 --steps 20 --preset tiny
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _module(preset: str, threads: int) -> Any:
    from binder import BindModel
    from binder.anchor import OpenClipAnchor
    from binder.training.module import BindingModule
    from binder.training.optim import OptimConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = {"preset": preset, "encoder": {"drop_path": 0.0}}  # no per-process randomness: the losses can match
    module = BindingModule(BindModel(OpenClipAnchor(model="binder-digits"), {"audio": encoder}), OptimConfig())
    module.log = lambda *a, **k: None
    return module


def _data(batch: int, steps: int, dim: int) -> List[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"audio": torch.randn(batch, 1, 1, 128, 204, generator=g),
             "image_embedding": torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1)}
            for _ in range(steps)]


def train(module: Any, data: List[dict], rank: int, world: int) -> tuple:
    opt = torch.optim.AdamW(module.model.trainable_parameters(), lr=1e-4, betas=(0.9, 0.95))
    per = data[0]["audio"].shape[0] // world
    losses, start = [], 0.0
    for i, full in enumerate(data):
        if i == 2:
            start = time.perf_counter()  # two warm-up steps
        part = {k: v[rank * per:(rank + 1) * per] for k, v in full.items()}
        opt.zero_grad()
        loss = module.pair_loss("audio", part, "train")
        loss.backward()
        if world > 1:
            for p in module.model.trainable_parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
            total = loss.detach().clone()
            dist.all_reduce(total)
            loss = total / world
        opt.step()
        losses.append(float(loss))
    return losses, time.perf_counter() - start


def _rank(rank: int, folder: str, args: Any) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    module = _module(args.preset, max(1, (os.cpu_count() or 2) // 2))
    losses, seconds = train(module, _data(args.batch, args.steps, module.model.anchor.embed_dim), rank, 2)
    if rank == 0:
        Path(folder, "two.json").write_text(json.dumps({"losses": losses, "seconds": seconds}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="global batch (split over the two processes)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--json")
    args = parser.parse_args()
    module = _module(args.preset, os.cpu_count() or 2)
    one, one_s = train(module, _data(args.batch, args.steps, module.model.anchor.embed_dim), 0, 1)
    folder = tempfile.mkdtemp(prefix="ddp-bench-")
    mp.spawn(_rank, args=(folder, args), nprocs=2, join=True)
    two = json.loads(Path(folder, "two.json").read_text())
    timed = args.steps - 2
    rate1, rate2 = args.batch * timed / one_s, args.batch * timed / two["seconds"]
    diff = max(abs(a - b) for a, b in zip(one, two["losses"]))
    print(f"global batch {args.batch}, {args.steps} steps, audio preset {args.preset}, {os.cpu_count()} cores")
    print("| processes | samples/s | vs 1 process | first loss | last loss |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| 1 | {rate1:,.1f} | 1.00x | {one[0]:.6f} | {one[-1]:.6f} |")
    print(f"| 2 (gloo) | {rate2:,.1f} | {rate2 / rate1:.2f}x | {two['losses'][0]:.6f} | {two['losses'][-1]:.6f} |")
    print(f"largest loss difference over {args.steps} steps: {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "one": {"losses": one, "samples_per_s": rate1},
                                               "two": {**two, "samples_per_s": rate2}, "max_loss_diff": diff},
                                              indent=2))


if __name__ == "__main__":
    main()
