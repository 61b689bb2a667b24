"""Compare ViT patch layouts for the tiny audio preset on the digits world (supervised probe).

Trains each layout with a linear classifier on FSDD (takes 5-49 train, 0-4 test) from cached
ImageBind-style log-mel clips and prints test accuracy per epoch and seconds per epoch, plus a
logistic-regression probe on raw features as the baseline of the same run. Usage:
    python benchmarks/audio_patch_layouts.py --epochs 5
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F

from binder.layers import Trunk, TrunkConfig
from binder.datasets.fsdd import list_recordings
from binder.datasets.paths import data_root
from binder.modalities.audio import AudioConfig, AudioPreprocessor

log = logging.getLogger("benchmarks")

LAYOUTS = {
    "square 16x16 (ImageBind-like)": TrunkConfig(patch=(16, 16), stride=(16, 16), width=128, depth=4, heads=4,
                                                 input_size=(128, 204)),
    "frame strips 128x4 (tiny)": TrunkConfig(patch=(128, 4), stride=(128, 4), width=128, depth=4, heads=4,
                                             input_size=(128, 204)),
}


def features() -> tuple:
    """(clips (N, 1, 128, 204), digits (N,), is_test (N,)) for every FSDD recording."""
    pre = AudioPreprocessor(AudioConfig())
    recs = list_recordings(data_root() / "fsdd")
    x = torch.stack([pre(r.path, num_clips=1)[0] for r in recs])
    return x, torch.tensor([r.digit for r in recs]), torch.tensor([r.take < 5 for r in recs])


def train_layout(vit: TrunkConfig, x: torch.Tensor, y: torch.Tensor, test: torch.Tensor, epochs: int,
                 lr: float = 2e-3, bs: int = 32) -> None:
    """Train encoder + linear head with cross-entropy; log accuracy and time per epoch."""
    torch.manual_seed(0)
    enc, head = Trunk(vit), torch.nn.Linear(vit.width, 10)
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    xtr, ytr = x[~test], y[~test]
    steps = epochs * (len(xtr) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for ep in range(epochs):
        t0 = time.time()
        enc.train()
        perm = torch.randperm(len(xtr))
        for i in range(len(xtr) // bs):
            idx = perm[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(head(enc(xtr[idx])), ytr[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        enc.eval()
        with torch.no_grad():
            acc = (head(enc(x[test])).argmax(-1) == y[test]).float().mean().item() * 100
        log.info("  epoch %d  test acc %5.1f%%  %.1f s/epoch", ep, acc, time.time() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    x, y, test = features()
    from sklearn.linear_model import LogisticRegression

    flat = x[:, 0, :, :80].flatten(1).numpy()
    probe = LogisticRegression(max_iter=300).fit(flat[~test.numpy()], y[~test].numpy())
    log.info("baseline: logistic regression on raw log-mel frames: %.1f%%",
             100 * probe.score(flat[test.numpy()], y[test].numpy()))
    for name, vit in LAYOUTS.items():
        log.info("%s", name)
        train_layout(vit, x, y, test, args.epochs)


if __name__ == "__main__":
    main()
