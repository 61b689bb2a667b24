"""The training app: ``python train.py ...`` and ``binder train ...`` (Hydra overrides).

:func:`main` stores the config schemas in Hydra's ConfigStore (:func:`register_configs`),
composes ``binder/configs/train.yaml`` and calls :func:`train`, the testable body, which runs
the function named by ``cfg.task`` (:func:`binder.training.tasks.bind` by default; experiments
name the recipes of :mod:`binder.recipes`) and records ``status.json`` in the run folder. A user
error is one line and exit status 2.

The app is the composition root: :data:`CONFIG_PACKAGES` names the packages whose modules
register the config schemas it composes (:data:`binder.config.SCHEMAS`); binder's core imports
none of them.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict

import hydra
import lightning as L
from omegaconf import DictConfig

from binder.config import SCHEMA_GROUP, SCHEMAS
from binder.errors import BinderConfigError, BinderError
from binder.extension import import_modules
from binder.files import atomic_write
from binder.logs import quiet_third_party
from binder.registry import get_modality, list_modalities
from binder.training.checkpoints import resume_argv

STATUS_FILE = "status.json"
CONFIG_PACKAGES = ("binder.anchor", "binder.training", "binder.evaluation", "binder.datasets", "binder.recipes")
"""Modules and packages whose modules register the schemas the app composes."""


def register_configs() -> None:
    """Store every registered config schema and every registered modality's config in Hydra's
    ConfigStore. Idempotent; call before composing (:func:`main` and the tests do)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    for target in CONFIG_PACKAGES:
        import_modules(target)
    _register_resolvers()
    cs = ConfigStore.instance()
    for key, node in SCHEMAS.items():
        group, name = key.rsplit("/", 1)
        cs.store(group=f"{SCHEMA_GROUP}/{group}", name=name, node=node)
    for name in list_modalities():
        spec = get_modality(name)
        cs.store(group=f"{SCHEMA_GROUP}/modality", name=name, node=spec.config_cls)
        if spec.config_file is not None:  # a plugin's own YAML: the `modality=<name>` option
            node = OmegaConf.to_container(OmegaConf.load(spec.config_file))
            cs.store(group="modality", name=name, node=node, package=f"modality.{name}")
        elif not _packaged_modality_yaml(name):  # no YAML at all: the dataclass defaults
            cs.store(group="modality", name=name, node={"defaults": [f"/{SCHEMA_GROUP}/modality/{name}@_here_",
                                                                     "_self_"]}, package=f"modality.{name}")


def _packaged_modality_yaml(name: str) -> bool:
    from importlib.resources import files

    return files("binder.configs").joinpath("modality", f"{name}.yaml").is_file()


def _register_resolvers() -> None:
    """``${binder_names:${modality}}`` -> "audio-depth" (run folder names);
    ``${binder_csv:${benchmark.modalities}}`` -> "audio,depth" (sweep parameters);
    ``${binder_first:${a},b}`` -> the first value that is not null (``oc.select`` keeps a null)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("binder_names", lambda node: "-".join(node.keys()) if hasattr(node, "keys")
                                    else str(node), replace=True)
    OmegaConf.register_new_resolver("binder_csv", lambda items: ",".join(str(i) for i in items), replace=True)
    OmegaConf.register_new_resolver("binder_first", lambda *values: next((v for v in values if v is not None), None),
                                    replace=True)


def _rank_zero() -> bool:
    """Whether this is the first process of the run (torchrun, SLURM or Lightning's own launch)."""
    import os

    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key) is not None:
            return os.environ[key] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _status(run_dir: Path, status: str, **extra: Any) -> None:
    if not _rank_zero():  # one status per run, written by the first process
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "time": dt.datetime.now().isoformat(timespec="seconds"), **extra}
    atomic_write(run_dir / STATUS_FILE, json.dumps(record, indent=2))


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Run the task named by ``cfg.task`` (a dotted function path, default :func:`bind`);
    ``status.json`` in the run folder records running / completed / failed / interrupted."""
    from hydra.utils import get_method

    run_dir = Path(cfg.run_dir).resolve()
    try:
        task = get_method(cfg.task)
    except Exception as err:
        raise BinderConfigError(f"task={cfg.task!r} is not an importable function: {err}") from None
    _status(run_dir, "running", task=cfg.task)
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        metrics = task(cfg)
    except KeyboardInterrupt:
        _status(run_dir, "interrupted", task=cfg.task)
        raise
    except BaseException as err:
        _status(run_dir, "failed", task=cfg.task, error=f"{type(err).__name__}: {err}")
        raise
    extra = {"skipped": metrics["skipped"]} if isinstance(metrics, dict) and metrics.get("skipped") else {}
    _status(run_dir, "completed", task=cfg.task, **extra)  # unreadable samples or shards, counted
    return metrics


# ----------------------------------------------------------------------------------------------
# The Hydra app
# ----------------------------------------------------------------------------------------------

@hydra.main(version_base="1.3", config_path="pkg://binder.configs", config_name="train")
def _hydra_app(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except BinderError as err:  # a user error: one line and a non-zero exit status, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """``python train.py ...`` / ``binder train ...``: Hydra overrides on the command line. A user
    error, binder's or Hydra's (an unknown option or key), is one line and exit status 2."""
    from hydra.errors import HydraException

    quiet_third_party()
    try:
        register_configs()
        sys.argv = [sys.argv[0], *resume_argv(sys.argv[1:])]  # resume=true: run in the run to resume
    except BinderError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    full = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its composition errors here instead of printing them
    try:
        _hydra_app()
    except HydraException as err:
        if full == "1":  # the user asked for Hydra's own report
            raise
        print(f"error: {hydra_message(err)}", file=sys.stderr)
        sys.exit(2)
    finally:
        if full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full


def hydra_message(err: Exception) -> str:
    """Hydra's error in one line: its first line, the options it lists, the key it names."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    options = [ln for ln in lines[1:] if not ln.startswith(("Available", "Config search path", "provider=",
                                                              "full_key", "object_type", "reference_type"))]
    key = next((ln for ln in lines if ln.startswith("full_key:")), "")
    if any(ln.startswith("Available options") for ln in lines):
        return f"{lines[0]}; available: {', '.join(options)}"
    cause = str(err.__cause__ or "").strip().splitlines()
    detail = f" {cause[0].strip()}" if cause else ""
    return lines[0] + detail + (f" ({key})" if key and key not in lines[0] else "")
