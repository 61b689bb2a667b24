"""Official ImageBind parameter names <-> binder names, size inference and shape checks.

The official checkpoint (facebookresearch/ImageBind, ``imagebind_huge.pth``) is a plain state
dict of ``ImageBindModel``: four ``ModuleDict`` groups keyed by modality (``vision``, ``text``,
``audio``, ``depth``, ``thermal``, ``imu``). binder serves vision and text from the anchor
(``anchor.vision``, ``anchor.text``) and the other four as bound encoders (``encoders.<m>``)
with BindModel's bias-free heads (``heads.<m>``). ``<m>`` is the modality, ``<i>`` a block.

=============================================================================  ===================================
official key                                                                   binder key
=============================================================================  ===================================
modality_preprocessors.vision.rgbt_stem.proj.1.weight  (Conv3d 2x14x14)       anchor.vision.patch_embed.weight
modality_preprocessors.vision.cls_token / .pos_embedding_helper.pos_embed      anchor.vision.cls_token / .pos_embed
modality_trunks.vision.pre_transformer_layer.0.{weight,bias}                   anchor.vision.pre_norm.*
modality_heads.vision.0.{weight,bias}  (LayerNorm)                             anchor.vision.norm.*
modality_heads.vision.2.weight  (Linear to the joint space)                    anchor.vision.proj.weight
modality_preprocessors.text.token_embedding.weight                             anchor.text.token_embed.weight
modality_preprocessors.text.pos_embed                                          anchor.text.pos_embed
modality_preprocessors.text.mask  (causal mask buffer)                         -- checked, not stored (rebuilt)
modality_heads.text.proj.0.{weight,bias} / .proj.1.weight                      anchor.text.norm.* / .proj.weight
modality_postprocessors.text.1.log_logit_scale  (learnable)                    anchor.text.log_logit_scale
modality_preprocessors.<m>.<stem>.proj.weight                                  encoders.<m>.patch_embed.weight
    <stem> = rgbt_stem (audio, thermal), depth_stem (depth), imu_stem (imu)
modality_preprocessors.<m>.<stem>.norm_layer.{weight,bias}                     encoders.<m>.patch_norm.*
modality_preprocessors.<m>.cls_token                                           encoders.<m>.cls_token
modality_preprocessors.<m>.pos_embedding_helper.pos_embed  (imu: .pos_embed)   encoders.<m>.pos_embed
modality_heads.<m>.0.{weight,bias}  (LayerNorm)                                encoders.<m>.norm.*
modality_heads.<m>.2.weight  (imu: .3.weight, after Dropout 0.5)               heads.<m>.weight
modality_postprocessors.<m>.1.log_logit_scale  (fixed buffer)                  encoders.<m>.log_logit_scale
modality_trunks.<m>.blocks.<i>.norm_1.* / .norm_2.*                            <tower>.blocks.<i>.norm1.* / .norm2.*
modality_trunks.<m>.blocks.<i>.attn.in_proj_{weight,bias}                      <tower>.blocks.<i>.attn.qkv.*
modality_trunks.<m>.blocks.<i>.attn.out_proj.{weight,bias}                     <tower>.blocks.<i>.attn.proj.*
modality_trunks.<m>.blocks.<i>.attn.bias_{k,v}  (not vision/text)              <tower>.blocks.<i>.attn.bias_{k,v}
modality_trunks.<m>.blocks.<i>.mlp.fc{1,2}.{weight,bias}                       <tower>.blocks.<i>.mlp.fc{1,2}.*
=============================================================================  ===================================

Sizes are read from tensor shapes (width, depth, MLP ratio, kernels, output width, which
optional layers exist; the patch stride from the number of positional embeddings), so
reduced-size checkpoints load. The number of attention heads is not visible in any shape: it
defaults to ImageBind's (vision 16, text 16, audio 12, depth 8, thermal 12, IMU 8) and can be
overridden. Stochastic depth and dropout rates are ImageBind's training settings.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import product
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from binder.errors import ModelLoadError
from binder.imagebind.text import TextConfig
from binder.layers import TrunkConfig

GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
ANCHOR = ("vision", "text")  # served by the anchor
BOUND = ("audio", "depth", "thermal", "imu")  # bound encoders
OFFICIAL_MODALITIES = ANCHOR + BOUND


@dataclass(frozen=True)
class Official:
    """What the checkpoint does not say about a trunk: ImageBind's own settings."""

    stem: str  # TrunkConfig.stem (patch, patch3d, windows)
    stem_module: str  # name of the stem under modality_preprocessors.<m>
    input_size: Tuple[int, ...]  # input the trunk was built for (without channels)
    in_chans: int
    heads: int
    drop_path: float = 0.0
    head_dropout: float = 0.0
    head_index: int = 2  # index of the Linear in modality_heads.<m>
    logit_scale: Optional[float] = None  # fixed post-normalisation scale
    pos_key: str = "pos_embedding_helper.pos_embed"


OFFICIAL: Dict[str, Official] = {
    "vision": Official("patch3d", "rgbt_stem.proj.1", (2, 224, 224), 3, heads=16),
    "audio": Official("patch", "rgbt_stem.proj", (128, 204), 1, heads=12, drop_path=0.1, logit_scale=20.0),
    "depth": Official("patch", "depth_stem.proj", (224, 224), 1, heads=8, logit_scale=5.0),
    "thermal": Official("patch", "rgbt_stem.proj", (224, 224), 1, heads=12, logit_scale=10.0),
    "imu": Official("windows", "imu_stem.proj", (2000,), 6, heads=8, drop_path=0.7, head_dropout=0.5,
                    head_index=3, logit_scale=5.0, pos_key="pos_embed"),
}
TEXT_HEADS = 16

# modality_trunks.<m>.blocks.<i>.<official> -> <tower>.blocks.<i>.<binder>
BLOCK_RULES: Dict[str, str] = {
    "norm_1.weight": "norm1.weight", "norm_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.bias_k": "attn.bias_k", "attn.bias_v": "attn.bias_v",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    "norm_2.weight": "norm2.weight", "norm_2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_OFFICIAL_BLOCK = re.compile(r"^modality_trunks\.(\w+)\.blocks\.(\d+)\.(.+)$")
_BINDER_BLOCK = re.compile(r"^(anchor\.vision|anchor\.text|encoders\.\w+)\.blocks\.(\d+)\.(.+)$")


def tower(modality: str) -> str:
    """binder prefix of an official modality's tower."""
    return f"anchor.{modality}" if modality in ANCHOR else f"encoders.{modality}"


def _trunk_rules(m: str) -> Dict[str, Optional[str]]:
    """Non-block keys of a patch trunk (vision or a bound modality)."""
    o, pre, t = OFFICIAL[m], f"modality_preprocessors.{m}", tower(m)
    rules = {
        f"{pre}.{o.stem_module}.weight": f"{t}.patch_embed.weight",
        f"{pre}.cls_token": f"{t}.cls_token",
        f"{pre}.{o.pos_key}": f"{t}.pos_embed",
        f"modality_heads.{m}.0.weight": f"{t}.norm.weight",  # LayerNorm before the CLS selection
        f"modality_heads.{m}.0.bias": f"{t}.norm.bias",
    }
    if m == "vision":  # no stem LayerNorm; a LayerNorm before the blocks; projection inside the tower
        rules.update({f"modality_trunks.{m}.pre_transformer_layer.0.weight": f"{t}.pre_norm.weight",
                      f"modality_trunks.{m}.pre_transformer_layer.0.bias": f"{t}.pre_norm.bias",
                      f"modality_heads.{m}.{o.head_index}.weight": f"{t}.proj.weight"})
        return rules
    stem = o.stem_module.rsplit(".", 1)[0]  # e.g. rgbt_stem
    rules.update({f"{pre}.{stem}.norm_layer.weight": f"{t}.patch_norm.weight",
                  f"{pre}.{stem}.norm_layer.bias": f"{t}.patch_norm.bias",
                  f"modality_heads.{m}.{o.head_index}.weight": f"heads.{m}.weight",  # BindModel's head
                  f"modality_postprocessors.{m}.1.log_logit_scale": f"{t}.log_logit_scale"})
    return rules


def _text_rules() -> Dict[str, Optional[str]]:
    return {
        "modality_preprocessors.text.token_embedding.weight": "anchor.text.token_embed.weight",
        "modality_preprocessors.text.pos_embed": "anchor.text.pos_embed",
        "modality_preprocessors.text.mask": None,  # causal mask buffer: checked, rebuilt at run time
        "modality_heads.text.proj.0.weight": "anchor.text.norm.weight",
        "modality_heads.text.proj.0.bias": "anchor.text.norm.bias",
        "modality_heads.text.proj.1.weight": "anchor.text.proj.weight",
        "modality_postprocessors.text.1.log_logit_scale": "anchor.text.log_logit_scale",
    }


def exact_rules(modality: str) -> Dict[str, Optional[str]]:
    """Official -> binder names of every non-block key of ``modality`` (None: not stored)."""
    return _text_rules() if modality == "text" else _trunk_rules(modality)


def to_binder(key: str) -> Optional[str]:
    """The binder name of an official key (None: consumed but not stored).

    Raises:
        KeyError: ``key`` is not a parameter of ImageBind's architecture.
    """
    match = _OFFICIAL_BLOCK.match(key)
    if match:
        m, i, rest = match.groups()
        if m not in OFFICIAL_MODALITIES or rest not in BLOCK_RULES:
            raise KeyError(key)
        return f"{tower(m)}.blocks.{i}.{BLOCK_RULES[rest]}"
    m = key.split(".")[1] if key.count(".") >= 1 else ""
    rules = exact_rules(m) if m in OFFICIAL_MODALITIES else {}
    if key not in rules:
        raise KeyError(key)
    return rules[key]


def to_official(key: str) -> str:
    """The official name of a binder key (inverse of :func:`to_binder`)."""
    match = _BINDER_BLOCK.match(key)
    if match:
        prefix, i, rest = match.groups()
        m = prefix.split(".")[1]
        inverse = {v: k for k, v in BLOCK_RULES.items()}
        return f"modality_trunks.{m}.blocks.{i}.{inverse[rest]}"
    for m in OFFICIAL_MODALITIES:
        for official, binder in exact_rules(m).items():
            if binder == key:
                return official
    raise KeyError(key)


def modality_keys(state: Mapping[str, torch.Tensor], modality: str) -> List[str]:
    """Official keys belonging to ``modality``."""
    return [k for k in state if k.split(".")[0] in GROUPS and k.split(".")[1:2] == [modality]]


def present_modalities(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Official modalities with at least one key in ``state``."""
    return [m for m in OFFICIAL_MODALITIES if modality_keys(state, m)]


def missing_keys(state: Mapping[str, torch.Tensor], modality: str) -> List[str]:
    """Required official keys of ``modality`` that ``state`` lacks (blocks: block 0 at least)."""
    required = list(exact_rules(modality))
    required += [f"modality_trunks.{modality}.blocks.0.{k}" for k in BLOCK_RULES if "bias_" not in k]
    return [k for k in required if k not in state]


def convert(state: Mapping[str, torch.Tensor], modalities: Iterable[str]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename the keys of ``modalities`` -> ({binder key: tensor}, unknown official keys)."""
    mapped, unknown, wanted = {}, [], set(modalities)
    for key, value in state.items():
        try:
            new = to_binder(key)
        except KeyError:
            unknown.append(key)
            continue
        if key.split(".")[1] in wanted and new is not None:
            mapped[new] = value
    return mapped, unknown


def check_shapes(expected: Mapping[str, torch.Tensor], mapped: Mapping[str, torch.Tensor], where: str) -> None:
    """Every expected binder key present in ``mapped`` with the same shape, and nothing more.

    Raises:
        ModelLoadError: naming up to five offending official keys.
    """
    missing = [to_official(k) for k in expected if k not in mapped]
    extra = [to_official(k) for k in mapped if k not in expected]
    bad = [f"{to_official(k)}: {tuple(mapped[k].shape)} (expected {tuple(v.shape)})"
           for k, v in expected.items() if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)]
    problems = [f"{name} {_few(keys)}" for name, keys in (("missing", missing), ("unexpected", extra),
                                                          ("wrong shapes", bad)) if keys]
    if problems:
        raise ModelLoadError(f"{where} is not a consistent ImageBind checkpoint: {'; '.join(problems)}")


def _few(items: Sequence[str], n: int = 5) -> str:
    return str(list(items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")


def _depth(state: Mapping[str, torch.Tensor], m: str) -> int:
    found = {int(match.group(2)) for k in state if (match := _OFFICIAL_BLOCK.match(k)) and match.group(1) == m}
    return max(found) + 1 if found else 0


def _heads(m: str, width: int, default: int, heads: Optional[Mapping[str, int]]) -> int:
    if heads and m in heads:
        return int(heads[m])
    if width % default:
        raise ModelLoadError(
            f"cannot tell the number of attention heads of the ImageBind {m} tower from the checkpoint "
            f"(width {width} is not divisible by ImageBind's {default}); pass heads={{'{m}': N}}")
    return default


def _stride(kernel: Tuple[int, ...], size: Tuple[int, ...], tokens: int, m: str,
            preferred: Sequence[Tuple[int, ...]]) -> Tuple[int, ...]:
    """The patch stride that gives ``tokens`` patches on ``size`` (ImageBind's first)."""
    candidates = [*preferred, *product(*[range(k, 0, -1) for k in kernel])]
    for stride in candidates:
        if len(stride) == len(kernel) and all(0 < s <= k for s, k in zip(stride, kernel)):
            grid = [(n - k) // s + 1 for n, k, s in zip(size, kernel, stride)]
            if min(grid) > 0 and math.prod(grid) == tokens:
                return tuple(int(s) for s in stride)
    raise ModelLoadError(f"the ImageBind {m} positional embedding has {tokens} patch tokens; no patch stride "
                         f"with kernel {kernel} gives that on an input of {size}")


def infer_trunk(state: Mapping[str, torch.Tensor], m: str, heads: Optional[Mapping[str, int]] = None) -> TrunkConfig:
    """The :class:`TrunkConfig` of official modality ``m`` (not text) from tensor shapes."""
    o, pre, blk = OFFICIAL[m], f"modality_preprocessors.{m}", f"modality_trunks.{m}.blocks.0"
    stem = state[f"{pre}.{o.stem_module}.weight"]
    width = int(state[f"{pre}.cls_token"].shape[-1])
    tokens = int(state[f"{pre}.{o.pos_key}"].shape[1]) - 1
    if o.stem == "windows":  # Linear(channels * window, width)
        kernel, in_chans = (int(stem.shape[1]) // o.in_chans,), o.in_chans
        stride = kernel
        if tokens * kernel[0] != o.input_size[0]:
            raise ModelLoadError(f"the ImageBind imu positional embedding has {tokens} tokens; expected "
                                 f"{o.input_size[0]} samples / window {kernel[0]}")
    else:
        kernel, in_chans = tuple(int(k) for k in stem.shape[2:]), int(stem.shape[1])
        official_stride = {"audio": (10, 10)}.get(m, kernel)
        stride = _stride(kernel, o.input_size, tokens, m, [official_stride, kernel])
    return TrunkConfig(
        stem=o.stem, in_chans=in_chans, input_size=o.input_size, patch=kernel, stride=stride, width=width,
        depth=_depth(state, m), heads=_heads(m, width, o.heads, heads),
        mlp_ratio=int(state[f"{blk}.mlp.fc1.weight"].shape[0]) / width, drop_path=o.drop_path,
        dropout=o.head_dropout, patch_norm=m != "vision", pre_norm=m == "vision",
        bias_kv=f"{blk}.attn.bias_k" in state,
        out_dim=int(state[f"modality_heads.{m}.{o.head_index}.weight"].shape[0]) if m == "vision" else None,
        logit_scale=o.logit_scale,
    )


def infer_text(state: Mapping[str, torch.Tensor], heads: Optional[Mapping[str, int]] = None) -> TextConfig:
    """The :class:`TextConfig` of the text tower from tensor shapes."""
    vocab, width = (int(v) for v in state["modality_preprocessors.text.token_embedding.weight"].shape)
    mask = state["modality_preprocessors.text.mask"]
    context = int(state["modality_preprocessors.text.pos_embed"].shape[1])
    causal = torch.full((context, context), float("-inf")).triu(1)
    if tuple(mask.shape) != (context, context) or not torch.equal(mask.float(), causal):
        raise ModelLoadError("the ImageBind text mask is not a causal mask over the context length")
    return TextConfig(
        vocab_size=vocab, context_length=context, width=width, depth=_depth(state, "text"),
        heads=_heads("text", width, TEXT_HEADS, heads),
        mlp_ratio=int(state["modality_trunks.text.blocks.0.mlp.fc1.weight"].shape[0]) / width,
        out_dim=int(state["modality_heads.text.proj.1.weight"].shape[0]),
    )
