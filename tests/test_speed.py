"""Speed switches: each equal to the reference it replaces, each default right on a CPU."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from binder.errors import BinderConfigError
from binder.layers import Attention, Blocks, math_attention, set_attention
from binder.training.speed import SpeedConfig, oom_error, resolve
from helpers import chirp


@pytest.mark.parametrize("bias_kv,causal", [(False, False), (True, False), (False, True)])
def test_sdpa_attention_equals_the_explicit_one(bias_kv, causal):
    torch.manual_seed(0)
    attn = Attention(64, 4, bias_kv=bias_kv)
    if bias_kv:
        torch.nn.init.normal_(attn.bias_k)
        torch.nn.init.normal_(attn.bias_v)
    x = torch.randn(3, 17, 64)
    fused = attn(x, causal)
    set_attention(attn, "math")
    assert torch.allclose(fused, attn(x, causal), atol=1e-5)
    q, k, v = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    assert torch.allclose(math_attention(q, k, v, True),
                          torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    with pytest.raises(BinderConfigError, match="attention must be one of"):
        set_attention(attn, "flash3")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    blocks = Blocks(32, 2, 4).train()
    x = torch.randn(2, 9, 32, requires_grad=True)
    blocks(x).square().sum().backward()
    plain = [p.grad.clone() for p in blocks.parameters()]
    blocks.zero_grad()
    blocks.grad_checkpointing = True
    blocks(x).square().sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, blocks.parameters()))


def test_fused_adamw_steps_like_the_foreach_one():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(8, 8)) for _ in range(2)]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    for params, fused in ((weights, False), (twins, True)):
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), **({"fused": True} if fused else {}))
        for _ in range(3):
            opt.zero_grad()
            sum(p.square().sum() for p in params).backward()
            opt.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights, twins))


def test_auto_switches_resolve_per_device(monkeypatch):
    cpu = resolve(SpeedConfig(), on_gpu=False)
    assert (cpu.precision, cpu.fused_adamw, cpu.pin_memory, cpu.audio_features) == ("32-true", "false", "false",
                                                                                    "loader")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = resolve(SpeedConfig(), on_gpu=True)
    assert (gpu.precision, gpu.fused_adamw, gpu.pin_memory, gpu.audio_features) == ("bf16-mixed", "true", "true",
                                                                                    "device")
    assert resolve(SpeedConfig(precision="16-mixed", fused_adamw="false"), on_gpu=True).fused_adamw == "false"
    with pytest.raises(BinderConfigError, match="speed.audio_features"):
        SpeedConfig(audio_features="gpu")


def test_out_of_memory_says_what_to_lower():
    err = oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 512,
                    resolve(SpeedConfig(), on_gpu=False), "cuda:0")
    text = str(err)
    assert "out of memory on cuda:0 at data.batch_size=512" in text
    assert "lower data.batch_size (now 512)" in text and "speed.grad_checkpointing=true" in text


def test_a_run_that_runs_out_of_memory_fails_with_the_advice(monkeypatch):
    from types import SimpleNamespace

    from binder.training import tasks

    class Exploding:
        strategy = SimpleNamespace(root_device=torch.device("cpu"))

        def fit(self, *a, **k):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB: out of memory")

    module = SimpleNamespace(model=SimpleNamespace(modality_parameters=lambda m: [1]))
    cfg = SimpleNamespace(data={"batch_size": 256})
    with pytest.raises(BinderConfigError, match="out of memory on cpu at data.batch_size=256"):
        tasks.fit(Exploding(), module, None, None, ["audio"], cfg, resolve(SpeedConfig(), False))


# ----- audio features computed batched on the device ---------------------------------------------

def _kaldi(wave: torch.Tensor, rate: int = 16000) -> torch.Tensor:
    import torchaudio

    return torchaudio.compliance.kaldi.fbank(wave[None], htk_compat=True, sample_frequency=rate, use_energy=False,
                                             window_type="hanning", num_mel_bins=128, dither=0.0,
                                             frame_length=25.0, frame_shift=10.0).T  # (mel, frames)


def test_batched_fbank_equals_kaldis_clip_by_clip():
    from binder.fbank import fbank

    torch.manual_seed(0)
    lengths = torch.tensor([32000, 20000, 399, 1234])
    waves = torch.randn(4, 32000) * 0.1
    out = fbank(waves, lengths, 16000)
    for i, n in enumerate(lengths.tolist()):
        clip = waves[i, :n]
        ref = _kaldi(torch.nn.functional.pad(clip, (0, max(0, 400 - n))))
        assert torch.allclose(out[i, :, : ref.shape[1]], ref, atol=2e-3, rtol=1e-4), i
        assert (out[i, :, ref.shape[1]:] == 0).all()


@pytest.mark.parametrize("rate,normalize", [(16000, "global"), (8000, "global"), (44100, "global"),
                                            (16000, "utterance"), (8000, "utterance")])
def test_device_features_equal_the_loaders(rate, normalize):
    from binder.modalities.audio import AudioConfig, AudioPreprocessor

    pre = AudioPreprocessor(AudioConfig(normalize=normalize))
    recordings = [chirp(seconds=s, rate=rate, seed=i) for i, s in enumerate((3.0, 1.2, 0.5))]
    loader = torch.stack([pre((w, rate)) for w in recordings])  # (B, 3, 1, mel, frames)
    raws = [pre.raw((w, rate)) for w in recordings]
    longest = max(r["wave"].shape[-1] for r in raws)
    waves = [torch.nn.functional.pad(r["wave"], (0, longest - r["wave"].shape[-1])) for r in raws]
    batch = {"wave": torch.stack(waves),
             "rate": torch.tensor([r["rate"] for r in raws]), "length": torch.stack([r["length"] for r in raws])}
    device = pre.features(batch)
    assert device.shape == loader.shape
    diff = (device - loader).abs()
    if rate == 16000:
        assert diff.max() < 1e-3  # the same numbers, batched
    else:  # resampled per clip instead of per recording: the clip edges differ, the rest agrees
        assert float(np.quantile(diff.numpy(), 0.99)) < 0.05 and diff.mean() < 0.01


def test_device_features_run_in_the_training_step():
    from binder import BindModel
    from binder.anchor import OpenClipAnchor
    from binder.training.module import BindingModule
    from binder.training.optim import OptimConfig

    torch.manual_seed(0)
    model = BindModel(OpenClipAnchor(model="binder-digits"), {"audio": {"encoder": {"depth": 1, "width": 32,
                                                                                    "heads": 2}}})
    module = BindingModule(model, OptimConfig())
    pre = model.preprocessors["audio"]
    raws = [pre.raw((chirp(seconds=1.0, seed=i), 16000), train=True) for i in range(2)]
    batch = {"audio": {"audio": {"wave": torch.stack([r["wave"] for r in raws]), "rate": torch.tensor([16000, 16000]),
                                 "length": torch.stack([r["length"] for r in raws])},
                       "image": torch.zeros(2, 3, 28, 56)}}
    out = module.on_after_batch_transfer(batch, 0)
    assert out["audio"]["audio"].shape == (2, 1, 1, 128, 204)
    assert replace(SpeedConfig(), attention="math").attention == "math"
