"""Class prompts: CLIP's templates and prompt-ensembled class embeddings.

ImageBind (arXiv 2305.05665, sec. 4.1 and appendix B) classifies every modality zero-shot against
text prompts built the way CLIP does (Radford et al. 2021, arXiv 2103.00020, sec. 3.1.4): each
class name is put into every template, the text embeddings are L2-normalised and averaged, and
the mean is re-normalised (the prompt ensemble). ImageBind keeps CLIP's default templates
unchanged for every modality: :data:`CLIP_TEMPLATES` are the 80 ImageNet templates published
with CLIP (openai/CLIP, ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``). A class with several
names (NYU-D's "other", LLVIP's person and background) scores as the maximum over its names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from binder.errors import BinderInputError

CLIP_TEMPLATES: List[str] = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]
"""CLIP's 80 ImageNet prompt templates: ImageBind's templates for every modality."""

TEMPLATE_SETS: Dict[str, List[str]] = {
    "clip": CLIP_TEMPLATES,
    # LanguageBind rewrites the prompts per modality; offered for comparison (not ImageBind's protocol).
    "sound": ["a sound of {}.", "the sound of {}.", "a recording of {}.", "this is a sound of {}."],
    "depth": ["a depth photo of {}.", "a depth map of a {}.", "a depth image of the {}."],
    "thermal": ["a thermal photo of {}.", "a thermal image of a {}.", "an infrared photo of the {}."],
    "plain": ["{}"],
}
"""Named template sets (``--templates @clip``)."""


def check_templates(templates: Sequence[str]) -> List[str]:
    """Templates as a list of strings each holding one ``{}``; else one error naming the bad one."""
    templates = list(templates)
    if not templates:
        raise BinderInputError("no prompt templates given: expected at least one template such as 'a photo of a {}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise BinderInputError(f"prompt template {t!r} must contain exactly one '{{}}' where the class name goes, "
                                   "e.g. 'a sound of {}.'")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as err:
            raise BinderInputError(f"prompt template {t!r} is not a valid format string: {err}") from None
    return templates


def resolve_templates(templates: Optional[Sequence[str]] = None, templates_file: "str | Path | None" = None,
                      default: Optional[Sequence[str]] = None) -> List[str]:
    """Templates from a list (``@name`` picks a named set), a file (one per line, ``#`` comments),
    or the dataset's default."""
    if templates and templates_file:
        raise BinderInputError("give templates or a templates file, not both")
    if templates_file is not None:
        path = Path(templates_file).expanduser()
        if not path.is_file():
            raise BinderInputError(f"templates file {str(path)!r} does not exist; expected one template per line")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return check_templates([ln for ln in lines if ln and not ln.startswith("#")])
    if templates:
        out: List[str] = []
        for t in templates:
            if isinstance(t, str) and t.startswith("@"):
                if t[1:] not in TEMPLATE_SETS:
                    raise BinderInputError(f"unknown template set {t!r}; known: "
                                           f"{', '.join('@' + k for k in TEMPLATE_SETS)}")
                out += TEMPLATE_SETS[t[1:]]
            else:
                out.append(t)
        return check_templates(out)
    return check_templates(default or CLIP_TEMPLATES)


@torch.no_grad()
def class_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenize: Callable[[List[str]], torch.Tensor],
                     classnames: Sequence[str], templates: Sequence[str],
                     device: "torch.device | str" = "cpu") -> torch.Tensor:
    """Prompt-ensembled, L2-normalised class embeddings (C, D): per class, the mean of the
    normalised text embeddings of every template, re-normalised."""
    per_class = []
    for name in classnames:
        tokens = tokenize([t.format(name) for t in templates]).to(device)
        per_class.append(F.normalize(F.normalize(encode_text(tokens).float(), dim=-1).mean(0), dim=-1))
    return torch.stack(per_class).cpu()  # (C, D)


def anchor_class_embeddings(anchor: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """:func:`class_embeddings` from a frozen anchor's text tower."""
    device = next(anchor.parameters()).device
    return class_embeddings(anchor.encode_text, anchor.tokenize, classnames, templates, device)


def grouped_scores(embeddings: torch.Tensor, name_embeddings: torch.Tensor, owner: Sequence[int],
                   num_classes: int, reduce: str = "max") -> torch.Tensor:
    """Class scores (N, C) from per-name scores: ``owner[j]`` is the class of name ``j``; a class
    with several names takes the maximum (``reduce='max'``) or the mean of its names' cosines."""
    per_name = embeddings.float() @ name_embeddings.float().T  # (N, names)
    owner_t = torch.as_tensor(list(owner))
    scores = torch.full((embeddings.shape[0], num_classes), float("-inf"))
    for c in range(num_classes):
        cols = per_name[:, owner_t == c]  # (N, names of c)
        scores[:, c] = cols.max(-1).values if reduce == "max" else cols.mean(-1)
    return scores
