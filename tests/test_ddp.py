"""Many processes: the all-gathered InfoNCE equals the single-process one (value and gradients) on
the same global batch, ranks that disagree stop with one error, and two CPU processes train."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from binder.training.losses import SymmetricInfoNCE

REPO = Path(__file__).resolve().parent.parent
WORLD, PER_RANK, DIM = 2, 4, 16


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * PER_RANK, DIM, generator=g)
    target = torch.nn.functional.normalize(torch.randn(WORLD * PER_RANK, DIM, generator=g), dim=-1)
    return x, target


def _encoder():
    torch.manual_seed(1)
    return torch.nn.Linear(DIM, DIM)


def _loss(encoder, x, target):
    z = torch.nn.functional.normalize(encoder(x), dim=-1)
    return SymmetricInfoNCE()(z, target, 0.1, ("audio", "image"))["loss/audio-image"]


class _Trainer:
    world_size = WORLD

    def __init__(self, rows: int) -> None:
        from types import SimpleNamespace

        self.datamodule = SimpleNamespace(fingerprint=lambda: {"train": {"audio": rows}})


CASES = {"same": (["a", "a"], [10, 10]), "config": (["a", "b"], [10, 10]), "data": (["a", "a"], [10, 12])}


def _rank(rank: int, folder: str) -> None:
    """One gloo process: its share of the global batch's loss and gradients, then the agreement checks."""
    from binder.training.distributed import RankAgreement

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        x, target = _batch()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        encoder = _encoder()
        loss = _loss(encoder, x[part], target[part])
        loss.backward()
        for p in encoder.parameters():  # what DDP does to the gradients: average over the ranks
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            torch.save({"loss": torch.stack(losses).mean(), "grads": [p.grad for p in encoder.parameters()]},
                       f"{folder}/rank0.pt")
        outcomes = {}
        for name, (configs, rows) in CASES.items():
            try:
                RankAgreement(configs[rank]).setup(_Trainer(rows[rank]), None, "fit")
                outcomes[name] = "agreed"
            except Exception as err:
                outcomes[name] = f"{type(err).__name__}: {err}"
        Path(folder, f"rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(str(folder),), nprocs=WORLD, join=True)
    return folder


def test_all_gathered_loss_and_gradients_equal_the_single_process_ones(two_ranks):
    got = torch.load(two_ranks / "rank0.pt", weights_only=True)
    x, target = _batch()
    encoder = _encoder()
    loss = _loss(encoder, x, target)
    loss.backward()
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
    for mine, theirs in zip(got["grads"], (p.grad for p in encoder.parameters())):
        assert torch.allclose(mine, theirs, atol=1e-6)


@pytest.mark.parametrize("case,expect", [("same", "agreed"), ("config", "rank 1 has another config than rank 0"),
                                         ("data", "rank 1 has another data than rank 0")])
def test_ranks_that_disagree_stop_with_one_error(two_ranks, case, expect):
    for rank in range(WORLD):
        text = json.loads((two_ranks / f"rank{rank}.json").read_text())[case]
        assert expect in text, text
        if expect != "agreed":
            assert text.startswith("BinderConfigError: the processes of this run disagree")


@pytest.mark.slow
def test_two_cpu_processes_train_end_to_end(tiny_anchor, small_data_root, tmp_path):
    """`binder train trainer=ddp` with two gloo processes on the CPU: one model, one status."""
    from helpers import small_encoder

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    cmd = [sys.executable, str(REPO / "train.py"), "modality=audio", *small_encoder("audio"), "trainer=ddp",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2", f"data.root={small_data_root}",
           "data.batch_size=4", "eval.zero_shot=false", f"hydra.run.dir={run}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert (run / "model" / "model.safetensors").is_file()
    assert "2 processes agree on the config and the data" in (run / "app.log").read_text()
