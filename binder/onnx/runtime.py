"""``binder.load(dir, runtime="onnx")``: a folder written by ``binder export`` as a binder model.

:class:`OnnxModel` has the API the rest of binder uses (``embed``, ``compose``, ``encode``,
``fingerprint``, ``modalities``; indexes, the CLI and the search page take it like a PyTorch
model): preprocessing is binder's own (each modality's preprocessor, the anchor's image transform
and tokenizer, rebuilt from ``binder-onnx.json``), the encoders run in onnxruntime (one session
per graph, made on first use). The folder is checked like a model folder: every listed file must
be there with its SHA-256, every graph listed, nothing else claimed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from binder.anchor import ImageConfig
from binder.embedding import EmbedMixin
from binder.errors import BinderError, BinderInputError, ModelLoadError
from binder.factory import FORMATS
from binder.files import file_digest, read_json_config
from binder.model import BindModel
from binder.onnx.export import CONFIG_NAME, FORMAT, VERSION, require
from binder.registry import build_config, get_modality
from binder.types import ANCHOR_MODALITIES, modality_name

log = logging.getLogger(__name__)


class OnnxAnchor:
    """What the runtime needs of the anchor: its size, fingerprint, image transform and tokenizer."""

    kind = "onnx"

    def __init__(self, record: Dict[str, Any]) -> None:
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transform import PreprocessCfg, image_transform_v2

        image = dict(record["image"])
        image["size"], image["mean"], image["std"] = (tuple(image[k]) for k in ("size", "mean", "std"))
        self.embed_dim, self._fingerprint = int(record["embed_dim"]), str(record["fingerprint"])
        self.record = record
        self.encode: Any = None  # the model's encode (set by OnnxModel)
        self._image = ImageConfig(**image)
        cfg = PreprocessCfg(size=self._image.size, mean=self._image.mean, std=self._image.std,
                                      interpolation=self._image.interpolation, resize_mode=self._image.resize_mode,
                                      fill_color=self._image.fill_color)
        self.transform = image_transform_v2(cfg, is_train=False)
        self.tokenizer = SimpleTokenizer(context_length=int(record["tokenizer"]["context_length"]))

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> Dict[str, Any]:
        """The exported anchor's description (its kind and fingerprint; the weights are the graphs)."""
        return {"kind": self.kind, "exported_from": self.record.get("kind"), "fingerprint": self._fingerprint}

    def image_config(self) -> ImageConfig:
        return self._image

    def preprocess_image(self, image: Any) -> torch.Tensor:
        from binder.anchor import open_image

        return self.transform(open_image(image))

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        texts = list(texts)
        bad = next(((i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad:
            raise BinderInputError(f"text input {bad[0]} is a {bad[1]}, expected a string")
        return self.tokenizer(texts)

    def parameters(self) -> Any:  # what some callers ask of an anchor (its device and dtype)
        return iter([torch.zeros(())])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> unit embeddings, through the model's image graph."""
        return self.encode("image", images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> unit embeddings, through the model's text graph."""
        return self.encode("text", tokens)


def read_onnx_config(path: Path) -> Dict[str, Any]:
    """Read and check ``binder-onnx.json`` (every problem: one ModelLoadError)."""
    where = repr(str(path / CONFIG_NAME))
    config = read_json_config(path, CONFIG_NAME, "an ONNX export of a binder model")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(f"{where} is not a binder ONNX config: key 'format' must be {FORMAT!r}")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise ModelLoadError(f"{where} was written by a newer binder (version {config.get('version')!r} > {VERSION})")
    for key in ("anchor", "modalities", "graphs", "files"):
        if not isinstance(config.get(key), dict):
            raise ModelLoadError(f"{where}: key {key!r} must be a JSON object")
    for modality, graph in config["graphs"].items():
        if not isinstance(graph, dict) or graph.get("file") not in config["files"]:
            raise ModelLoadError(f"{where}: the {modality} graph names no file listed in 'files'")
    return config


def verify_onnx_files(path: Path, config: Dict[str, Any], digests: bool = True) -> None:
    """Every file listed is in the folder (inside it), with its SHA-256 when ``digests``."""
    for name, digest in config["files"].items():
        if not isinstance(name, str) or Path(name).name != name:
            raise ModelLoadError(f"{str(path / CONFIG_NAME)!r}: file entry {name!r} points outside the folder")
        target = path / name
        if not target.is_file():
            raise ModelLoadError(f"ONNX model folder {str(path)!r} lacks {name!r}, listed in {CONFIG_NAME}")
        if digests and file_digest(target) != digest:
            raise ModelLoadError(f"{str(target)!r} does not match the SHA-256 recorded in {CONFIG_NAME}: the file is "
                                 "corrupt, truncated or from another export (load with verify=False to skip the check)")


class OnnxModel(EmbedMixin):
    """An exported binder model run by onnxruntime, with binder's model API."""

    architecture = "onnx"
    training = False

    def __init__(self, path: Path, config: Dict[str, Any], threads: Optional[int] = None) -> None:
        self.path, self.config, self.threads = path, config, threads
        self.anchor = OnnxAnchor(config["anchor"])
        self.anchor.encode = self.encode
        self.graphs: Dict[str, Dict[str, Any]] = dict(config["graphs"])
        self.configs = {m: build_config(m, values) for m, values in config["modalities"].items()}
        self.preprocessors: Dict[str, Any] = {}
        for m, cfg in self.configs.items():
            spec = get_modality(m)
            pre = spec.preprocessor_cls(cfg)
            if hasattr(pre, "attach_anchor"):
                pre.attach_anchor(self.anchor)
            self.preprocessors[m] = pre
        self.query_spreads: Dict[str, float] = {str(k): float(v) for k, v in config.get("query_spreads", {}).items()}
        self.name_or_path = str(path)
        self._sessions: Dict[str, Any] = {}

    # ----- the model API ----------------------------------------------------------------------

    @property
    def modalities(self) -> List[str]:
        return list(self.graphs)

    @property
    def bound_modalities(self) -> List[str]:
        return [m for m in self.graphs if m not in ANCHOR_MODALITIES and m in self.configs]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def quantized(self) -> Optional[str]:
        return self.config.get("quantize")

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self

    def to(self, device: Any) -> "OnnxModel":
        if torch.device(device).type != "cpu":
            raise BinderInputError(f"the onnx runtime here runs on the CPU, not {device}")
        return self

    def temperature(self, modality: str) -> float:
        return float(self.configs[modality_name(modality)].temperature)

    def fingerprint(self, modality: str) -> str:
        """The fingerprint of the PyTorch model's ``modality`` (recorded at export)."""
        modality = modality_name(modality)
        if modality not in self.graphs:
            raise self._missing(modality)
        return str(self.graphs[modality]["fingerprint"])

    def item_preprocessor(self, modality: str) -> Any:
        if modality == "video" and modality in self.graphs and modality not in self.preprocessors:
            from binder.imagebind.model import video_preprocessor  # ImageBind's video route

            self.preprocessors[modality] = video_preprocessor(self.anchor)
        return super().item_preprocessor(modality)

    compose = BindModel.compose

    def session(self, modality: str) -> Any:
        """The onnxruntime session of ``modality``'s graph (made on first use)."""
        if modality not in self._sessions:
            ort = require("onnxruntime")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            threads = self.threads or int(os.environ.get("BINDER_ONNX_THREADS", "0") or 0)
            if threads:
                options.intra_op_num_threads = threads
            file = self.path / self.graphs[modality]["file"]
            try:
                self._sessions[modality] = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime's own error types
                raise ModelLoadError(f"{str(file)!r} is not a loadable ONNX graph: {str(err).splitlines()[0][:200]}") \
                    from None
        return self._sessions[modality]

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Embed one preprocessed batch of ``modality`` -> L2-normalised (N, D); clips (N, K, ...)
        of a bound modality are embedded one by one and averaged."""
        modality = modality_name(modality)
        if modality not in self.graphs:
            raise self._missing(modality)
        graph = self.graphs[modality]
        shape = tuple(graph["input_shape"])
        clips = graph["clips"] == "averaged" and x.ndim == len(shape) + 2
        if tuple(x.shape[1 + clips:]) != shape:
            raise BinderInputError(f"{modality} tensor must be (N, {', '.join(map(str, shape))})"
                                   f"{' or (N, clips, ...)' if graph['clips'] == 'averaged' else ''}, got "
                                   f"{tuple(x.shape)}")
        flat = x.reshape(-1, *shape) if clips else x
        feed = flat.detach().cpu().numpy().astype(graph.get("input_dtype", "float32"), copy=False)
        z = torch.from_numpy(np.asarray(self.session(modality).run(None, {"input": feed})[0], dtype=np.float32))
        if clips:
            z = F.normalize(z.reshape(x.shape[0], x.shape[1], -1).mean(1), dim=-1)  # (N, D)
        return z

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {modality_name(m): self.encode(modality_name(m), x) for m, x in inputs.items()}

    __call__ = forward

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, {self.modalities}, {self.quantized or 'float32'})"


def load_onnx(path: "str | Path", verify: bool = True, threads: Optional[int] = None, **unused: Any) -> OnnxModel:
    """Load a folder written by :func:`binder.onnx.export.export_onnx`.

    Raises:
        ModelLoadError: a missing or foreign config, a listed file missing or changed (edited,
            truncated, from another export), a modality no installed module registers.
        MissingDependencyError: onnxruntime is not installed.
    """
    require("onnxruntime")
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ModelLoadError(f"ONNX model folder {str(path)!r} does not exist")
    config = read_onnx_config(path)
    verify_onnx_files(path, config, digests=verify)
    device = unused.get("device")
    if device is not None and torch.device(device).type != "cpu":
        raise ModelLoadError(f"the onnx runtime here runs on the CPU; got device={device!r}")
    try:
        return OnnxModel(path, config, threads)
    except BinderError as err:
        raise ModelLoadError(f"{str(path / CONFIG_NAME)!r} does not describe a model this binder can run: {err}") \
            from None


class OnnxFormat:
    """The folder ``binder export --format onnx`` writes (``binder-onnx.json`` + graphs)."""

    name = "onnx"
    runtimes = ("onnx",)

    def recognises(self, path: Path) -> bool:
        return path.is_dir() and (path / CONFIG_NAME).is_file()

    def load(self, path: Path, **options: Any) -> OnnxModel:
        return load_onnx(path, **options)


FORMATS.register(OnnxFormat.name, OnnxFormat())
