"""Streaming shards: packed from a manifest (with or without anchor embeddings), read once per
epoch across workers in a new order each epoch, damaged chunks skipped and counted, read from an
S3-compatible server, and a run killed mid-epoch resumes without repeating or skipping a sample."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from binder.errors import BinderInputError
from helpers import small_encoder

pytest.importorskip("litdata")
REPO = Path(__file__).resolve().parent.parent


def write_manifest(data_root: Path, folder: Path, n: int = 24) -> Path:
    """``n`` (MNIST PNG, FSDD wav of the same digit) rows, plus one with a missing wav."""
    from binder.datasets.mnist import load_mnist

    images, labels = load_mnist(data_root / "mnist")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        png = folder / "images" / f"{i}.png"
        Image.fromarray(images[i], mode="L").save(png)
        wav = data_root / "fsdd" / "recordings" / f"{labels[i]}_jackson_{10 + i % 30}.wav"
        rows.append({"id": f"r{i}", "image": str(png), "audio": str(wav), "label": str(labels[i])})
    rows.append({"id": "gone", "image": str(folder / "images" / "0.png"), "audio": str(folder / "gone.wav"),
                 "label": "0"})
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "audio", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def packed(data_root, tmp_path_factory):
    from binder.datasets.shards import pack

    tmp = tmp_path_factory.mktemp("shards")
    manifest = write_manifest(data_root, tmp)
    meta = pack(manifest, tmp / "shards", "audio", chunk_mb=1)
    return {"tmp": tmp, "manifest": manifest, "path": tmp / "shards", "meta": meta}


def _datamodule(compose, path: Path, tmp: Path, *extra: str, random_anchor: bool = True):
    from binder.training.data import build_datamodule
    from binder.training.tasks import build_model

    anchor = ["anchor.model=binder-digits", "anchor.build=null"] if random_anchor else []
    cfg = compose(["modality=audio", *small_encoder("audio"), *anchor, "anchor.cache=null", "data=shards",
                   f"data.path={path}", "data.batch_size=4", f"run_dir={tmp}", *extra])
    model = build_model(cfg)
    dm = build_datamodule(cfg.data, model, ["audio"], "image")
    dm.setup("fit")
    return dm


def _epoch(loader) -> list:
    ids = []
    for batch in loader:
        ids += list(batch.get("id", []))
    return ids


def test_pack_records_what_it_packed(packed):
    meta = packed["meta"]
    assert meta["count"] == 24 and meta["modality"] == "audio" and meta["anchor_cache"] is None
    assert meta["skipped"] == {"missing audio file": 1}
    assert sorted(meta["labels"]) == meta["labels"] and (packed["path"] / "index.json").is_file()
    with pytest.raises(BinderInputError, match="exists and is not empty"):
        from binder.datasets.shards import pack

        pack(packed["manifest"], packed["path"], "audio")


def test_every_sample_once_per_epoch_in_a_new_order(packed, compose, tmp_path):
    dm = _datamodule(compose, packed["path"], tmp_path, "data.num_workers=2")
    loader = dm.train_dataloader().iterables["audio"]
    first, second = _epoch(loader), _epoch(loader)
    assert len(first) == len(set(first)) == 24 and set(first) == set(second)  # drop_last keeps whole batches of 4
    assert first != second
    batch = next(iter(loader))
    assert batch["audio"].shape == (4, 1, 1, 128, 204) and batch["image"].shape[0] == 4 and int(batch["skipped"]) == 0


def test_a_damaged_chunk_is_skipped_and_counted(packed, compose, tmp_path):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(packed["path"], copy)
    chunk = sorted(copy.glob("chunk-*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3:] = os.urandom(len(data) - len(data) // 3)
    chunk.write_bytes(bytes(data))
    dm = _datamodule(compose, copy, tmp_path, "data.num_workers=0")
    skipped, seen = 0, 0
    for batch in dm.train_dataloader().iterables["audio"]:
        skipped += int(batch["skipped"])
        seen += len(batch.get("id", []))
    assert skipped > 0 and seen + skipped == 24


def test_a_run_reports_the_skipped_samples_in_its_status(packed, compose, tiny_anchor, tmp_path):
    import shutil

    from binder.training import train

    copy = tmp_path / "damaged"
    shutil.copytree(packed["path"], copy)
    chunk = sorted(copy.glob("chunk-*.bin"))[-1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2:] = os.urandom(len(data) - len(data) // 2)
    chunk.write_bytes(bytes(data))
    run = tmp_path / "run"
    metrics = train(compose(["modality=audio", *small_encoder("audio"), "anchor.cache=null", "data=shards",
                             f"data.path={copy}", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
                             "eval.zero_shot=false", "callbacks=none", f"run_dir={run}"]))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["skipped"]["audio"] > 0
    assert metrics["skipped"] == status["skipped"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_stream_from_an_s3_compatible_server(packed, compose, tmp_path, monkeypatch):
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=url)
        for _ in range(100):
            try:
                client.create_bucket(Bucket="pairs")
                break
            except Exception:
                time.sleep(0.1)
        for file in packed["path"].iterdir():
            client.upload_file(str(file), "pairs", f"train/{file.name}")
        from binder.datasets.shards import read_meta

        assert read_meta("s3://pairs/train", {"endpoint_url": url})["count"] == 24
        dm = _datamodule(compose, "s3://pairs/train", tmp_path, f"data.endpoint_url={url}",
                         f"data.cache_dir={tmp_path / 'chunks'}", "data.num_workers=0")
        ids = _epoch(dm.train_dataloader().iterables["audio"])
        assert sorted(ids) == sorted(f"r{i}" for i in range(24))
        with pytest.raises(BinderInputError, match="have no binder.json"):
            read_meta("s3://pairs/nothing", {"endpoint_url": url})
    finally:
        server.terminate()
        server.wait(10)


def test_shards_carry_the_anchor_cache(data_root, compose, tiny_anchor, tmp_path):
    """binder cache over a manifest, then shards of its embeddings: no image file is packed."""
    from binder.datasets.shards import pack
    from binder.training import train

    manifest = write_manifest(data_root, tmp_path, n=12)
    cfg = compose(["modality=audio", *small_encoder("audio"), "data=manifest", f"data.path={manifest}",
                   "task=binder.training.tasks.cache", f"anchor.cache={tmp_path / 'cache'}", "cache.num_workers=0",
                   f"run_dir={tmp_path / 'run'}"])
    assert train(cfg)["images"] == 12
    meta = pack(manifest, tmp_path / "shards", "audio", cache=tmp_path / "cache")
    assert meta["count"] == 12 and meta["views"] == 1 and meta["anchor_cache"]["data"]
    dm = _datamodule(compose, tmp_path / "shards", tmp_path, "data.num_workers=0", random_anchor=False)
    batch = next(iter(dm.train_dataloader().iterables["audio"]))
    assert "image" not in batch and batch["image_embedding"].shape == (4, 128)


# ----------------------------------------------------------------------------------------------
# A SIGKILL in the middle of an epoch
# ----------------------------------------------------------------------------------------------

def _train_cmd(shards: Path, run: Path, ids: Path) -> list:
    return [sys.executable, str(REPO / "train.py"), "modality=audio", *small_encoder("audio"), "data=shards",
            f"data.path={shards}", "data.batch_size=4", "data.num_workers=2", "trainer.max_epochs=2",
            "trainer.check_val_every_n_epoch=10", "eval.zero_shot=false", "callbacks.checkpoint.every_n_steps=1",
            "+callbacks.ids._target_=idlog.IdLog", f"+callbacks.ids.path={ids}", f"hydra.run.dir={run}",
            "+trainer.deterministic=true", "trainer.log_every_n_steps=1"]


@pytest.mark.slow
def test_a_killed_run_resumes_without_repeating_or_skipping_a_sample(packed, tiny_anchor, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    whole_ids, whole = tmp_path / "whole.jsonl", tmp_path / "whole"
    done = subprocess.run(_train_cmd(packed["path"], whole, whole_ids), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = [json.loads(line) for line in whole_ids.read_text().splitlines()]
    assert len(expected) == 12  # 2 epochs x 6 steps

    killed_ids, killed = tmp_path / "killed.jsonl", tmp_path / "killed"
    proc = subprocess.run(_train_cmd(packed["path"], killed, killed_ids) + ["+callbacks.ids.kill_at=3"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)  # SIGKILLed after step 3
    assert proc.returncode == -signal.SIGKILL
    before = [json.loads(line) for line in killed_ids.read_text().splitlines()]
    ckpt_step = _checkpoint_step(killed / "checkpoints" / "last.ckpt")
    assert ckpt_step == 3 and len(before) == 3  # in the middle of the first epoch of 6 steps
    resumed = subprocess.run(_train_cmd(packed["path"], killed, killed_ids) + ["resume=true"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = [json.loads(line) for line in killed_ids.read_text().splitlines()][len(before):]
    steps = {r["step"]: r["ids"] for r in before if r["step"] <= ckpt_step}
    steps.update({r["step"]: r["ids"] for r in after})
    assert [steps[s] for s in sorted(steps)] == [r["ids"] for r in expected]  # the same samples, in the same order
    epoch1 = [i for r in expected[:6] for i in r["ids"]]
    assert len(epoch1) == len(set(epoch1)) == 24 and Counter(i for s in sorted(steps)[:6] for i in steps[s]) == \
        Counter(epoch1)
    loss_whole, loss_resumed = _last_loss(whole), _last_loss(killed)
    assert abs(loss_whole - loss_resumed) < 0.05 * max(1.0, abs(loss_whole))  # within noise


def _checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _last_loss(run: Path) -> float:
    rows = list(csv.DictReader(open(sorted((run / "logs").rglob("metrics.csv"))[-1])))
    values = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    return float(np.mean(values[-3:]))
