"""Fine-tuning: LoRA adapters (add, save, load, merge, refusals), selective fine-tuning, the
``finetune`` config group in real runs, and ``binder merge-adapters``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import binder
from binder.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoraSettings,
    add_lora,
    adapted_modalities,
    load_adapters,
    merge_adapters,
    save_adapters,
)
from binder.anchor import OpenClipAnchor
from binder.cli import main
from binder.errors import BinderConfigError, BinderInputError, ModelLoadError
from binder.model import BindModel
from binder.training import train
from helpers import SMALL_ENCODER, chirp, small_encoder

pytest.importorskip("peft")


def make_model(anchor, seed: int = 0, modalities=("audio",)) -> BindModel:
    torch.manual_seed(seed)
    return BindModel(anchor, {m: {"encoder": SMALL_ENCODER} for m in modalities}).eval()


def sounds(n: int = 3) -> list:
    return [(chirp(0.6 + 0.2 * i, 8000, seed=i), 8000) for i in range(n)]


def embed(model, items) -> torch.Tensor:
    with torch.no_grad():
        return model.embed(audio=items, progress=False)["audio"]


def tensor_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        digest.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def perturb_adapters(model) -> None:
    """Give the (zero-initialised) B matrices values, as training would."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)


@pytest.fixture(scope="module")
def file_anchor(anchor_file):
    return OpenClipAnchor(model="binder-digits", pretrained=str(anchor_file))


@pytest.fixture(scope="module")
def base_dir(file_anchor, tmp_path_factory) -> Path:
    return binder.save(make_model(file_anchor), tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def adapter_dir(base_dir, tmp_path_factory) -> Path:
    model = binder.load(base_dir)
    add_lora(model, ["audio"], LoraSettings(rank=4))
    perturb_adapters(model)
    return save_adapters(model, tmp_path_factory.mktemp("adapters") / "adapters", base=str(base_dir))


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------

def test_lora_trains_only_adapters_and_starts_as_the_base(base_dir):
    model = binder.load(base_dir)
    before = embed(model, sounds())
    counts = add_lora(model, ["audio"], LoraSettings(rank=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # rank 4 on qkv (32 -> 96) and proj (32 -> 32) of one block: 4 * (32 + 96) + 4 * (32 + 32)
    assert counts == {"audio": 4 * (32 + 96) + 4 * (32 + 32)}
    assert torch.allclose(embed(model, sounds()), before, atol=1e-6)  # B starts at zero
    with pytest.raises(BinderInputError, match="save them with"):
        binder.save(model, base_dir.parent / "never")
    assert not (base_dir.parent / "never").exists()


def test_adapters_round_trip_and_merge(base_dir, adapter_dir, tmp_path):
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    base = binder.load(base_dir)
    assert config["modalities"]["audio"]["fingerprint"] == base.fingerprint("audio")
    assert config["modalities"]["audio"]["settings"]["rank"] == 4
    adapted = binder.load(base_dir, adapters=adapter_dir)
    assert adapted_modalities(adapted) == ["audio"]
    z_adapted = embed(adapted, sounds())
    assert not torch.allclose(z_adapted, embed(base, sounds()), atol=1e-3)  # the adapters change the function
    merged = merge_adapters(adapted)
    assert adapted_modalities(merged) == []
    z_merged = embed(merged, sounds())
    assert torch.nn.functional.cosine_similarity(z_adapted, z_merged).min() >= 0.9999
    again = binder.load(binder.save(merged, tmp_path / "merged"))  # a plain model folder
    assert torch.allclose(embed(again, sounds()), z_merged, atol=1e-6)


def test_merge_adapters_cli(base_dir, adapter_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge-adapters", "--model", str(base_dir), "--adapters", str(adapter_dir), "-o", str(out)]) == 0
    assert "cosine" in capsys.readouterr().err
    z = embed(binder.load(out), sounds())
    z_pair = embed(binder.load(base_dir, adapters=adapter_dir), sounds())
    assert torch.nn.functional.cosine_similarity(z, z_pair).min() >= 0.9999
    assert main(["merge-adapters", "--model", str(base_dir), "--adapters", str(adapter_dir), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_adapters_of_another_base_are_refused(file_anchor, adapter_dir, tmp_path, capsys):
    other = binder.save(make_model(file_anchor, seed=5), tmp_path / "other")
    with pytest.raises(ModelLoadError, match="trained on another audio encoder"):
        binder.load(other, adapters=adapter_dir)
    out = tmp_path / "merged"
    assert main(["merge-adapters", "--model", str(other), "--adapters", str(adapter_dir), "-o", str(out)]) == 2
    assert "another audio encoder" in capsys.readouterr().err and not out.exists()  # nothing written


@pytest.mark.parametrize("damage", ["truncated", "edited", "config"])
def test_damaged_adapter_files_are_refused(base_dir, adapter_dir, tmp_path, damage):
    import shutil

    broken = Path(shutil.copytree(adapter_dir, tmp_path / "adapters"))
    weights = broken / WEIGHTS_NAME
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "edited":
        weights.write_bytes(data[:-8] + bytes(8))
    else:
        (broken / CONFIG_NAME).write_text("{not json")
    base = binder.load(base_dir)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ModelLoadError, match="truncated, corrupt or was edited|not valid UTF-8 JSON"):
        load_adapters(base, broken)
    assert adapted_modalities(base) == [] and all(torch.equal(v, base.state_dict()[k]) for k, v in state.items())


def test_a_failed_load_leaves_the_model_as_it_was(base_dir, adapter_dir, tmp_path):
    """Tensors that do not fit the injected layers: refused, and the model is its base again."""
    import shutil

    from safetensors.torch import load_file, save_file

    from binder.files import file_digest

    broken = Path(shutil.copytree(adapter_dir, tmp_path / "adapters"))
    state = load_file(str(broken / WEIGHTS_NAME))
    state = {k: (v[:2] if ".lora_A." in k else v) for k, v in state.items()}
    save_file(state, str(broken / WEIGHTS_NAME))
    config = json.loads((broken / CONFIG_NAME).read_text())
    config["files"][WEIGHTS_NAME] = file_digest(broken / WEIGHTS_NAME)
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    base = binder.load(base_dir)
    z = embed(base, sounds())
    with pytest.raises(ModelLoadError, match="wrong shape"):
        load_adapters(base, broken)
    assert adapted_modalities(base) == [] and torch.allclose(embed(base, sounds()), z)
    binder.save(base, tmp_path / "still-saves")


@pytest.mark.parametrize("settings, match", [
    ({"rank": 0}, "rank must be a positive integer"),
    ({"alpha": -1.0}, "alpha must be a positive number"),
    ({"target_modules": ["attn.nope"]}, "'attn.nope' does not exist in the audio encoder"),
    ({"target_modules": []}, "non-empty list"),
])
def test_bad_lora_settings_are_refused(base_dir, settings, match):
    model = binder.load(base_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BinderConfigError, match=match):
        add_lora(model, ["audio"], LoraSettings(**settings))
    assert adapted_modalities(model) == [] and state.keys() == model.state_dict().keys()


def test_lora_on_a_modality_the_model_lacks(base_dir):
    with pytest.raises(BinderInputError, match="model binds"):
        add_lora(binder.load(base_dir), ["depth"], LoraSettings())


# ----------------------------------------------------------------------------------------------
# The finetune group in real runs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_base(tiny_anchor, tmp_path_factory) -> Path:
    """A saved two-modality model (audio + depth) on the digits anchor."""
    anchor = OpenClipAnchor(model=f"local-dir:{tiny_anchor['checkpoint'].parent}")
    model = make_model(anchor, modalities=("audio", "depth"))
    return binder.save(model, tmp_path_factory.mktemp("digits_base") / "model")


def run_overrides(run_dir: Path, data_root: Path, *extra: str) -> list:
    return ["modality=audio", *small_encoder("audio"), "trainer.enable_progress_bar=false", f"run_dir={run_dir}",
            f"data.root={data_root}", "data.batch_size=8", "trainer.fast_dev_run=true", *extra]


@pytest.mark.parametrize("part, changed, kept", [
    ("head", ["heads.audio"], ["encoders.audio"]),
    ("blocks", ["encoders.audio.blocks.0", "encoders.audio.norm", "heads.audio"],
     ["encoders.audio.patch_embed", "encoders.audio.pos_embed"]),
])
def test_selective_keeps_everything_else_bit_identical(compose, digits_base, small_data_root, tmp_path, part,
                                                       changed, kept):
    base = binder.load(digits_base)
    hashes = {"depth": tensor_hash(base.encoders["depth"]) + tensor_hash(base.heads["depth"]),
              "anchor": tensor_hash(base.anchor)}
    metrics = train(compose(run_overrides(tmp_path, small_data_root, f"init_from={digits_base}",
                                          "finetune=selective", f"finetune.part={part}", "finetune.blocks=1")))
    tuned = binder.load(tmp_path / "model")
    assert tensor_hash(tuned.encoders["depth"]) + tensor_hash(tuned.heads["depth"]) == hashes["depth"]
    assert tensor_hash(tuned.anchor) == hashes["anchor"]
    before, after = base.state_dict(), tuned.state_dict()
    for prefix in changed:
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    for prefix in kept:
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    head = 32 * 128
    assert metrics["finetune"]["mode"] == "selective"
    assert metrics["finetune"]["trainable_parameters"] == (head if part == "head" else
                                                           sum(p.numel() for n, p in base.named_parameters()
                                                               if n.startswith(("encoders.audio.blocks.0",
                                                                                "encoders.audio.norm"))) + head)


def test_lora_run_writes_adapters_and_merged_model(compose, digits_base, small_data_root, tmp_path):
    metrics = train(compose(run_overrides(tmp_path, small_data_root, f"init_from={digits_base}", "finetune=lora",
                                          "finetune.rank=2", "finetune.unfreeze=[heads.audio.*]")))
    assert metrics["finetune"]["mode"] == "lora"
    assert metrics["finetune"]["trainable_parameters"] == 2 * (32 + 96) + 2 * (32 + 32) + 32 * 128
    pair = binder.load(digits_base, adapters=tmp_path / "adapters")
    merged = binder.load(tmp_path / "model")
    items = sounds()
    assert torch.nn.functional.cosine_similarity(embed(pair, items), embed(merged, items)).min() >= 0.9999
    assert not torch.equal(merged.heads["audio"].weight, binder.load(digits_base).heads["audio"].weight)
    assert tensor_hash(merged.encoders["depth"]) == tensor_hash(binder.load(digits_base).encoders["depth"])


@pytest.mark.parametrize("extra, match", [
    (["finetune=lora", "finetune.rank=0"], "rank must be a positive integer"),
    (["finetune=lora", "finetune.target_modules=[attn.nothing]"], "'attn.nothing' does not exist"),
    (["finetune=lora", "finetune.unfreeze=[heads.nothing.*]"], "names no parameter"),
    (["finetune=selective", "finetune.modality=thermal", "modality=[audio,thermal]"], "does not bind it"),
    (["finetune=selective", "finetune.blocks=9", "finetune.part=blocks"], "has only 1 blocks"),
])
def test_bad_finetune_runs_write_nothing(compose, digits_base, small_data_root, tmp_path, extra, match):
    with pytest.raises(BinderConfigError, match=match):
        train(compose(run_overrides(tmp_path, small_data_root, f"init_from={digits_base}", *extra)))
    assert not (tmp_path / "model").exists() and not (tmp_path / "adapters").exists()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_lora_needs_a_model_to_adapt(compose, small_data_root, tmp_path):
    with pytest.raises(BinderConfigError, match="set init_from"):
        train(compose(run_overrides(tmp_path, small_data_root, "finetune=lora")))
