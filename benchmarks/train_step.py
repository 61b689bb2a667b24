"""Training-step speed of a bound encoder: samples/s, model FLOPs utilisation, and the anchor cache.

One process, random weights (speed does not depend on them), a real binder training step
(:class:`binder.training.module.BindingModule`: the encoder, the symmetric InfoNCE, backward,
AdamW) timed after warm-up, in two or more settings measured in the same run:

* ``anchor``: the frozen anchor embeds the paired images in every step (the baseline);
* ``cache``: the step reads the anchor's embeddings as ``binder cache`` stores them;

each in fp32 and, with ``--precision bf16``, under bf16 autocast. MFU is the trained model's
FLOPs (the audio encoder's forward + backward, counted by ``torch.utils.flop_counter`` on one
step) per second over the device's dense peak (``--peak``, default the H100's 989 TFLOP/s bf16).

GPU (the issue's figures: ImageBind's audio encoder, one 2 s clip of 128 x 204 per sample, batch
256, against OpenCLIP ViT-H-14 with random weights)::

    python benchmarks/train_step.py --device cuda --preset imagebind --anchor ViT-H-14 --batch 256 \
        --precision fp32 bf16 --json benchmarks/train_step_h100.json

CPU (the anchor cache on the 2-core machine, digits anchor, the quick start's encoder)::

    python benchmarks/train_step.py --device cpu --preset tiny --anchor binder-digits --batch 64 --steps 30
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Dict

import torch


def build(preset: str, anchor: str, device: str, compile_: bool) -> Any:
    from binder import BindModel
    from binder.anchor import OpenClipAnchor
    from binder.training.module import BindingModule
    from binder.training.optim import OptimConfig

    torch.manual_seed(0)
    model = BindModel(OpenClipAnchor(model=anchor), {"audio": {"preset": preset}}).to(device)
    if compile_:
        model.encoders["audio"].compile()
    module = BindingModule(model, OptimConfig())
    module.log = lambda *a, **k: None  # no Lightning trainer here
    return module


def batch(module: Any, size: int, cached: bool, device: str) -> Dict[str, torch.Tensor]:
    cfg = module.model.configs["audio"]
    out = {"audio": torch.randn(size, 1, 1, cfg.num_mel_bins, cfg.target_length, device=device)}
    if cached:
        out["image_embedding"] = torch.nn.functional.normalize(
            torch.randn(size, module.model.anchor.embed_dim, device=device), dim=-1)
    else:
        h, w = module.model.anchor.image_config().size
        out["image"] = torch.randn(size, 3, h, w, device=device)
    return out


def encoder_flops(module: Any, size: int, device: str) -> float:
    """FLOPs of one training step of the audio encoder and head (forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = batch(module, size, True, device)
    with FlopCounterMode(display=False) as counter:
        module.model.encode("audio", x["audio"]).sum().backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run(module: Any, size: int, cached: bool, precision: str, device: str, steps: int, warmup: int) -> Dict[str, Any]:
    params = module.model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), **({"fused": True} if device == "cuda" else {}))
    data = batch(module, size, cached, device)
    amp = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    module.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = module.pair_loss("audio", data, "train")
        loss.backward()
        opt.step()
        return float(loss.detach()) if device == "cpu" else 0.0

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {"step_ms": 1000 * seconds, "samples_per_s": size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="imagebind", help="audio encoder preset: imagebind | tiny")
    parser.add_argument("--anchor", default="ViT-H-14", help="open_clip model, random weights: ViT-H-14, binder-digits")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak", type=float, default=989e12, help="dense peak FLOP/s of the device (bf16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the audio encoder")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.manual_seed(0)
    module = build(args.preset, args.anchor, args.device, args.compile)
    flops = encoder_flops(module, args.batch, args.device) / args.batch
    rows = {}
    for precision in args.precision:
        for cached in (False, True):
            name = f"{precision}, {'cached targets' if cached else 'anchor in the step'}"
            r = run(module, args.batch, cached, precision, args.device, args.steps, args.warmup)
            r["mfu"] = flops * r["samples_per_s"] / args.peak
            rows[name] = r
    base = next(iter(rows.values()))["samples_per_s"]
    print(f"{args.device}: audio preset {args.preset}, anchor {args.anchor} (random weights), batch {args.batch}; "
          f"encoder training FLOPs per sample {flops / 1e9:.1f} GFLOP")
    print("| setting | step ms | samples/s | vs first row | MFU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['step_ms']:.1f} | {r['samples_per_s']:,.1f} | {r['samples_per_s'] / base:.2f}x | "
              f"{100 * r['mfu']:.1f}% |")
    for precision in args.precision:
        a, c = rows[f"{precision}, anchor in the step"], rows[f"{precision}, cached targets"]
        print(f"anchor cache ({precision}): step time with the anchor / with cached targets = "
              f"{a['step_ms'] / c['step_ms']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "flops_per_sample": flops, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
