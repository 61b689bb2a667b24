"""Few-shot linear probes on frozen embeddings (ImageBind, arXiv 2305.05665, sec. 4.2 and Fig. 3).

ImageBind's few-shot figure trains a linear classifier on 1, 2, 4, 8 and 16 labelled examples per
class of a modality's frozen embeddings (ESC-50 audio, SUN-D depth) and reports top-1 on the test
split. The paper gives neither the solver nor the regularisation, so binder's choices are written
into the result: multinomial logistic regression (softmax, bias, L2 penalty ``l2`` on the weights,
default 1e-3) fitted to convergence by full-batch L-BFGS on the L2-normalised embeddings, and the
shots drawn per class without replacement by each seed (at least three seeds; the result is their
mean and standard deviation). A class with fewer training items than the shots uses all it has
(counted). Where the protocol evaluates folds (ESC-50), each fold is tested with shots drawn from
the other four and the fold accuracies are averaged.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from binder.errors import BinderInputError

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-3, max_iter: int = 200) -> torch.Tensor:
    """Weights (D + 1, C) (bias last) of a multinomial logistic regression fitted by L-BFGS."""
    xt = torch.from_numpy(np.concatenate([x, np.ones((len(x), 1), np.float32)], 1)).double()  # (n, D + 1)
    yt = torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(xt.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w, yt) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def predict(w: torch.Tensor, x: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(np.concatenate([x, np.ones((len(x), 1), np.float32)], 1)).double()
    return (xt @ w).argmax(-1).numpy()


def sample_shots(labels: np.ndarray, shots: int, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """Indices of ``shots`` items per class (all of a smaller class), and how many classes were short."""
    chosen, short = [], 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        short += len(members) < shots
        chosen.append(rng.choice(members, size=min(shots, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)), short


def probe_once(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, shots: int,
               seed: int, num_classes: int, l2: float) -> Tuple[float, int]:
    """Top-1 (percent) of one probe, and the number of classes with fewer than ``shots`` items."""
    idx, short = sample_shots(train_y, shots, np.random.default_rng(seed))
    w = fit_logistic(train_x[idx], train_y[idx], num_classes, l2)
    return 100.0 * float((predict(w, test_x) == test_y).mean()), short


def few_shot(folds: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], num_classes: int,
             shots: Sequence[int] = SHOTS, seeds: Sequence[int] = SEEDS,
             l2: float = 1e-3) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Few-shot probes over ``folds`` of (train x, train y, test x, test y).

    Returns:
        (metrics ``acc1@<k>shot`` and ``acc1@<k>shot_std`` over seeds, details per shot and seed).
    """
    if len(seeds) < 1 or any(s < 1 for s in shots):
        raise BinderInputError(f"few-shot probes need shots >= 1 and at least one seed, got {list(shots)}, "
                               f"{list(seeds)}")
    metrics: Dict[str, float] = {}
    details: Dict[str, Any] = {"shots": list(shots), "seeds": list(seeds), "l2": l2, "solver": "lbfgs logistic",
                               "per_seed": {}, "classes_short": {}}
    for k in shots:
        per_seed, short = [], 0
        for seed in seeds:
            accs = []
            for train_x, train_y, test_x, test_y in folds:
                acc, s = probe_once(train_x, train_y, test_x, test_y, k, seed, num_classes, l2)
                accs.append(acc)
                short = max(short, s)
            per_seed.append(float(np.mean(accs)))
        metrics[f"acc1@{k}shot"] = float(np.mean(per_seed))
        metrics[f"acc1@{k}shot_std"] = float(np.std(per_seed))
        details["per_seed"][str(k)] = per_seed
        details["classes_short"][str(k)] = short
    return metrics, details
