"""Export a binder model to a folder of ONNX graphs (``binder export MODEL --format onnx -o DIR``).

One graph per modality the model embeds, each ``preprocessed batch -> L2-normalised embeddings``
(the encoder, its head and the normalisation; the anchor's towers for image and text), traced
with PyTorch's ``torch.export``-based ONNX exporter (opset 18) with a dynamic batch axis. Clips of a
bound modality are embedded one by one and averaged by the runtime, as :class:`binder.BindModel`
does. ``binder-onnx.json`` beside the graphs holds what the runtime needs to preprocess inputs
(every bound modality's config, the anchor's image transform and tokenizer), the fingerprints
of the PyTorch model (so indexes built with it accept the exported model), the query
calibration and the SHA-256 of every file. With ``quantize="int8"`` the graphs' matrix products
are quantized dynamically (onnxruntime's ``quantize_dynamic``, int8 weights); the fingerprints
stay those of the model it approximates.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from binder.errors import BinderInputError, MissingDependencyError
from binder.files import atomic_folder, file_digest
from binder.registry import config_to_dict, get_modality
from binder.types import IMAGE, TEXT

log = logging.getLogger(__name__)

FORMAT, VERSION, CONFIG_NAME = "binder-onnx", 1, "binder-onnx.json"
OPSET = 18
QUANTIZE = ("int8",)


def require(package: str = "onnxruntime") -> Any:
    """Import ``package`` (onnx, onnxruntime, onnxscript) or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingDependencyError(package, "ONNX export and the onnx runtime", "onnx") from None


class _Embedder(nn.Module):
    """``model.encode(modality, x)`` as a module: one preprocessed batch -> unit embeddings."""

    def __init__(self, model: Any, modality: str) -> None:
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(self.modality, x)


def example_batch(model: Any, modality: str) -> Tuple[torch.Tensor, bool]:
    """(a batch of two or more preprocessed inputs, whether each item's clips are averaged by the
    runtime) for tracing ``modality``."""
    from PIL import Image

    if modality == IMAGE:
        return torch.stack([model.anchor.preprocess_image(Image.new("RGB", (64, 48), c)) for c in ("red", "blue")]), \
            False
    if modality == TEXT:
        return model.anchor.tokenize(["a photo", "a sound of rain"]), False
    item = model.item_preprocessor(modality)(get_modality(modality).example_input())
    if modality in model.configs:  # (K, ...) clips: traced as a batch of single clips
        batch = item if item.shape[0] > 1 else torch.cat([item, item])
        return batch, True
    return torch.stack([item, item]), False  # a tower that takes whole items (ImageBind's video)


@contextlib.contextmanager
def _exportable() -> Iterator[None]:
    """PyTorch's fused attention fast path off (it has no ONNX form), and the export's own
    progress messages quiet."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(None):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def export_graph(model: Any, modality: str, path: Path) -> Dict[str, Any]:
    """Trace ``modality``'s embedding function to ``path`` -> its entry in the config.

    Raises:
        BinderInputError: the encoder cannot be traced (naming the module and why).
    """
    require("onnxscript")
    x, clips = example_batch(model, modality)
    module = model.encoders[modality] if modality in model.configs else model.anchor
    what = f"{modality} encoder ({type(module).__module__}.{type(module).__qualname__})"
    try:
        with _exportable(), torch.no_grad():
            program = torch.onnx.export(_Embedder(model, modality).eval(), (x,), dynamo=True, input_names=["input"],
                                        opset_version=OPSET, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                        verbose=False)
            program.save(str(path))
    except BinderInputError:
        raise
    except Exception as err:  # torch.export / the ONNX translation: many error types
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise BinderInputError(f"the {what} cannot be exported to ONNX: {type(err).__name__}: {first}") from None
    return {"file": path.name, "input_shape": list(x.shape[1:]), "input_dtype": str(x.dtype).replace("torch.", ""),
            "clips": "averaged" if clips else "none", "fingerprint": model.fingerprint(modality)}


def quantize_graph(path: Path, out: Path) -> None:
    """Dynamic int8 quantization of the matrix products of ``path`` into ``out``."""
    require("onnx")
    quantization = require("onnxruntime.quantization")
    quantization.quantize_dynamic(str(path), str(out), weight_type=quantization.QuantType.QInt8,
                                  op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                                  use_external_data_format=path.stat().st_size > 1 << 30)


def anchor_record(model: Any) -> Dict[str, Any]:
    """The anchor's embedding size, fingerprint, image transform and tokenizer (what the runtime
    preprocesses image and text with)."""
    from dataclasses import asdict

    anchor = model.anchor
    tokenizer = getattr(anchor, "tokenizer", None)
    kind = type(tokenizer).__name__
    if kind != "SimpleTokenizer":
        raise BinderInputError(f"the anchor's tokenizer ({kind}) cannot be described for the ONNX runtime; "
                               "exported anchors use open_clip's CLIP BPE tokenizer")
    image = asdict(anchor.image_config())
    return {"kind": anchor.describe().get("kind"), "embed_dim": int(anchor.embed_dim),
            "fingerprint": anchor.fingerprint(), "image": image,
            "tokenizer": {"kind": "clip_bpe", "context_length": int(tokenizer.context_length)}}


def export_onnx(model: Any, path: "str | Path", quantize: Optional[str] = None, source: str = "",
                only: Optional[List[str]] = None) -> Path:
    """Write ``model`` as ONNX graphs with their preprocessing config to the folder ``path``
    (atomically replacing one there) and return it.

    Args:
        model: A binder model (any ``BindModel``).
        path: The folder to write.
        quantize: None (float32) or ``"int8"`` (dynamic quantization of the matrix products).
        source: Where the model came from (recorded).
        only: Export only these modalities' graphs (default: every modality the model embeds).

    Raises:
        BinderInputError: an encoder that cannot be traced (naming it), an unknown ``quantize``.
        MissingDependencyError: onnx, onnxscript or onnxruntime is not installed.
    """
    if quantize not in (None, *QUANTIZE):
        raise BinderInputError(f"quantize must be one of {list(QUANTIZE)} or None, got {quantize!r}")
    require("onnx")
    path = Path(path).expanduser().absolute()
    model = model.eval()
    anchor = anchor_record(model)  # before any tracing: a tokenizer the runtime cannot rebuild is refused
    with atomic_folder(path) as tmp:
        graphs = {}
        wanted = [m for m in model.modalities if only is None or m in only]
        if not wanted:
            raise BinderInputError(f"nothing to export: the model embeds {model.modalities}, asked for {only}")
        for modality in wanted:
            name = f"{modality}.onnx"
            log.info("exporting %s", modality)
            traced = tmp / (f"{modality}.float.onnx" if quantize else name)
            graphs[modality] = {**export_graph(model, modality, traced), "file": name}
            if quantize:
                quantize_graph(traced, tmp / name)
                for leftover in tmp.glob(f"{modality}.float.onnx*"):
                    leftover.unlink()
        config = {"format": FORMAT, "version": VERSION, "architecture": getattr(model, "architecture", "bind"),
                  "source": source, "quantize": quantize, "anchor": anchor,
                  "modalities": {m: config_to_dict(cfg) for m, cfg in model.configs.items()},
                  "graphs": graphs, "query_spreads": dict(model.query_spreads)}
        config["files"] = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    log.info("exported %s to %s (%s)", sorted(graphs), path, quantize or "float32")
    return path

