"""Fast training steps: every speed switch of a run, each with a default right on a GPU and a CPU.

The ``speed`` node (:class:`SpeedConfig`) gathers what makes a step fast on a GPU and what would
be wrong on a CPU: bf16 autocast (Micikevicius et al., "Mixed Precision Training", ICLR 2018;
bf16 keeps fp32's range, so no loss scaling), PyTorch's ``scaled_dot_product_attention`` (flash
attention, Dao et al. 2022, where the kernels apply), ``torch.compile``, gradient checkpointing
(Chen et al. 2016), fused AdamW kernels, pinned host memory, and the audio filterbank computed
batched on the accelerator from raw waveforms (:mod:`binder.fbank`). :func:`resolve` turns
``auto`` into the concrete choice for the device the run trains on; :func:`apply_to_model`
sets the model's switches. Out of memory is one error saying what to lower (:func:`oom_error`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional

import torch

from binder.config import SCHEMAS
from binder.errors import BinderConfigError
from binder.layers import ATTENTION, set_attention

log = logging.getLogger(__name__)

AUTO = "auto"
AUDIO_FEATURES = ("auto", "loader", "device")


@dataclass
class SpeedConfig:
    """Speed switches of a training run (the schema of the ``speed`` node)."""

    precision: str = AUTO  # auto: bf16-mixed on a GPU (16-mixed before bf16), 32-true on a CPU; or Lightning's
    attention: str = "sdpa"  # sdpa: torch's fused attention (flash kernels on a GPU) | math: the explicit reference
    compile: bool = False  # torch.compile each bound encoder (pays on long GPU runs; a minute or more of warm-up)
    grad_checkpointing: bool = False  # recompute block activations in backward: less memory, ~30% more compute
    fused_adamw: str = AUTO  # auto: fused AdamW kernels on a GPU, the foreach path on a CPU | true|false
    pin_memory: str = AUTO  # auto: page-locked loader batches when training on a GPU | true | false
    audio_features: str = AUTO  # auto: device on a GPU, loader on a CPU | loader: log-mel in the workers | device:
    # raw clips to the accelerator, resampled and turned into filterbanks there, batched
    matmul_precision: str = "high"  # torch.set_float32_matmul_precision (TF32 on a GPU): highest|high|medium

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION:
            raise BinderConfigError(f"speed.attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.audio_features not in AUDIO_FEATURES:
            raise BinderConfigError(f"speed.audio_features must be one of {AUDIO_FEATURES}, got "
                                    f"{self.audio_features!r}")
        for key in ("fused_adamw", "pin_memory"):
            value = str(getattr(self, key)).lower()
            if value not in ("auto", "true", "false"):
                raise BinderConfigError(f"speed.{key} must be auto, true or false, got {getattr(self, key)!r}")
            setattr(self, key, value)
        if self.matmul_precision not in ("highest", "high", "medium"):
            raise BinderConfigError(f"speed.matmul_precision must be highest, high or medium, got "
                                    f"{self.matmul_precision!r}")


SCHEMAS.register("speed/default", SpeedConfig)


def gpu_planned(trainer_node: Any) -> bool:
    """Whether the run trains on a CUDA GPU (``trainer.accelerator`` gpu/cuda, or auto with one)."""
    accelerator = str((trainer_node or {}).get("accelerator") or "auto").lower()
    if accelerator in ("cpu", "mps", "tpu"):
        return False
    return torch.cuda.is_available()


def resolve(cfg: SpeedConfig, on_gpu: bool) -> SpeedConfig:
    """``cfg`` with every ``auto`` replaced by the choice for a GPU (``on_gpu``) or a CPU."""
    precision = cfg.precision
    if precision == AUTO:
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if on_gpu else "32-true"

    def flag(value: str) -> str:
        return ("true" if on_gpu else "false") if value == AUTO else value

    features = cfg.audio_features if cfg.audio_features != AUTO else ("device" if on_gpu else "loader")
    return replace(cfg, precision=precision, fused_adamw=flag(cfg.fused_adamw), pin_memory=flag(cfg.pin_memory),
                   audio_features=features)


def apply_to_model(model: Any, cfg: SpeedConfig, modalities: Any) -> None:
    """Set the attention kernel, gradient checkpointing and compilation of the bound encoders."""
    for name in modalities:
        encoder = model.encoders[name]
        set_attention(encoder, cfg.attention)
        if cfg.grad_checkpointing:
            encoder.set_grad_checkpointing(True)
        if cfg.compile:
            encoder.compile()  # in place: the state dict keeps its keys
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.matmul_precision)


def describe(cfg: SpeedConfig) -> Dict[str, Any]:
    """The resolved switches, for the run's log."""
    return {"precision": cfg.precision, "attention": cfg.attention, "compile": cfg.compile,
            "grad_checkpointing": cfg.grad_checkpointing, "fused_adamw": cfg.fused_adamw == "true",
            "pin_memory": cfg.pin_memory == "true", "audio_features": cfg.audio_features}


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is running out of accelerator (or host) memory."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def oom_error(err: BaseException, batch_size: Optional[int], speed: SpeedConfig, device: str) -> BinderConfigError:
    """One error that says what ran out and what to lower, in the order that costs least."""
    advice = [f"lower data.batch_size (now {batch_size})" if batch_size else "lower data.batch_size"]
    if not speed.grad_checkpointing:
        advice.append("set speed.grad_checkpointing=true (less memory, ~30% slower steps)")
    if speed.precision in ("32-true", "32"):
        advice.append("train in bf16 (speed.precision=bf16-mixed)")
    advice.append("or spread the batch over more devices (trainer=ddp); the contrastive loss sees the global batch")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return BinderConfigError(f"out of memory on {device} at data.batch_size={batch_size}: {first[:200]}. To fit: "
                             + "; ".join(advice))
