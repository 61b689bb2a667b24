"""Enrollment (binder.enrollment): a source's mean embedding removed, saved with its model's
fingerprint; and the leave-one-speaker-out recipe's enrolled column."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import binder
from binder import BinderInputError, Enrollment, ModelLoadError
from binder.enrollment import from_embeddings


def _clips(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(8000).astype(np.float32) * 0.1, 16000) for _ in range(n)]


def test_a_shared_shift_is_removed_exactly():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(40, 16), dim=-1)
    shift = torch.randn(16) * 3
    plain, shifted = from_embeddings("audio", z, "f"), from_embeddings("audio", z + shift, "f")
    assert torch.allclose(plain(z), shifted(z + shift), atol=1e-5)
    out = plain(z)
    assert out.shape == (40, 16) and torch.allclose(out.norm(dim=-1), torch.ones(40), atol=1e-5)
    assert torch.allclose(F.normalize(z - z.mean(0), dim=-1), out, atol=1e-6)
    ref = torch.randn(7, 16)
    with_ref = from_embeddings("audio", z, "f", reference=ref)
    assert with_ref.n == 40 and with_ref.reference_n == 7
    assert torch.allclose(with_ref(z), F.normalize(z - z.mean(0) + ref.mean(0), dim=-1), atol=1e-6)


def test_enrollment_gives_back_what_a_source_bias_takes():
    """Prototypes of 10 classes; one source pulls every sample towards class 0. Nearest-prototype
    accuracy falls with the bias and comes back after enrolling the source on other samples."""
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(10, 32, generator=g), dim=-1)

    noise = 0.35 * torch.randn(500, 32, generator=g)
    y = torch.arange(500) % 10
    clean = F.normalize(protos[y] + noise, dim=-1)
    biased = F.normalize(protos[y] + noise + 1.2 * protos[0], dim=-1)
    enrol = F.normalize(protos[y[:200]] + 0.35 * torch.randn(200, 32, generator=g) + 1.2 * protos[0], dim=-1)

    def acc(z: torch.Tensor) -> float:
        return float(((z @ protos.T).argmax(1) == y).float().mean())

    corrected = acc(from_embeddings("audio", enrol, "f", reference=protos)(biased))
    assert acc(biased) < acc(clean) - 0.3 and corrected > acc(clean) - 0.05



def test_coral_gives_the_source_the_reference_covariance():
    from binder.enrollment import coral_matrix

    g = torch.Generator().manual_seed(0)
    source = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    reference = torch.randn(500, 6, generator=g, dtype=torch.float64) * torch.arange(1.0, 7.0, dtype=torch.float64)
    w = coral_matrix(source, reference, shrinkage=1e-9)
    moved = (source - source.mean(0)) @ w  # (N, D)
    assert torch.allclose(torch.cov(moved.T), torch.cov(reference.T), atol=1e-5)
    # Full shrinkage: both covariances isotropic, W a multiple of the identity.
    w = coral_matrix(source, reference, shrinkage=1.0)
    assert torch.allclose(w, w[0, 0] * torch.eye(6, dtype=torch.float64), atol=1e-9) and w[0, 0] > 0


def test_coral_undoes_a_source_distortion_the_mean_cannot():
    """One source stretches the embedding space along one direction (and shifts it): removing its
    mean is not enough; aligning its covariance to the training sources' brings the accuracy back."""
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(10, 16, generator=g), dim=-1)

    def samples(n: int) -> tuple:
        y = torch.arange(n) % 10
        return protos[y] + 0.3 * torch.randn(n, 16, generator=g), y

    (train, _), (enrol, _), (test, y) = samples(1000), samples(300), samples(500)
    u = F.normalize(torch.randn(16, generator=g), dim=0)
    stretch, shift = torch.eye(16) + 6 * torch.outer(u, u), 0.8 * protos[3]  # (D, D), (D,)
    enrol, distorted = enrol @ stretch + shift, test @ stretch + shift

    def acc(z: torch.Tensor) -> float:
        return float(((F.normalize(z, dim=-1) @ protos.T).argmax(1) == y).float().mean())

    clean = acc(test)
    mean = acc(from_embeddings("audio", enrol, "f", reference=train)(distorted))
    coral = acc(from_embeddings("audio", enrol, "f", reference=train, align="coral")(distorted))
    assert acc(distorted) < clean - 0.15 and mean < clean - 0.1 and coral > clean - 0.04 and coral > mean + 0.1


def test_enroll_embeds_and_corrects(audio_model, tmp_path: Path):
    source, new = _clips(6), _clips(3, seed=1)
    speaker = binder.enroll(audio_model, audio=source)
    assert speaker.modality == "audio" and speaker.n == 6 and speaker.fingerprint == audio_model.fingerprint("audio")
    z = speaker.embed(audio_model, new)
    assert z.shape == (3, audio_model.anchor.embed_dim) and torch.isfinite(z).all()
    assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5)
    expected = F.normalize(audio_model.embed(audio=new, progress=False)["audio"]
                           - audio_model.embed(audio=source, progress=False)["audio"].mean(0), dim=-1)
    assert torch.allclose(z, expected, atol=1e-5)
    with_ref = binder.enroll(audio_model, audio=source, reference=_clips(4, seed=2))
    assert with_ref.reference_n == 4 and with_ref.reference_mean is not None and with_ref.matrix is None
    coral = binder.enroll(audio_model, audio=source, reference=_clips(4, seed=2), align="coral")
    assert coral.align == "coral" and coral.matrix.shape == (coral.dim, coral.dim)

    for name, e in (("speaker", speaker), ("coral", coral)):
        back = Enrollment.load(e.save(tmp_path / f"{name}.safetensors"), model=audio_model)
        assert (back.modality, back.n, back.fingerprint, back.align) == ("audio", 6, e.fingerprint, e.align)
        assert back.reference_n == e.reference_n and torch.equal(back.source_mean, e.source_mean)
        assert torch.equal(back(torch.ones(2, e.dim)), e(torch.ones(2, e.dim)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coral.safetensors", "speaker.safetensors"]


@pytest.mark.parametrize("call, match", [
    (lambda m: binder.enroll(m), "exactly one modality"),
    (lambda m: binder.enroll(m, audio=_clips(2), image=[np.zeros((8, 8, 3), np.uint8)] * 2), "exactly one modality"),
    (lambda m: binder.enroll(m, depth=[np.zeros((8, 8), np.float32)] * 2), "depth"),
    (lambda m: binder.enroll(m, audio=_clips(1)), "at least 2 inputs .one source.s samples., got a list of 1"),
    (lambda m: binder.enroll(m, audio=_clips(2)[0]), "must be a list"),
    (lambda m: binder.enroll(m, audio=_clips(3), reference=_clips(1)), "reference must be a list of at least 2"),
    (lambda m: from_embeddings("audio", torch.full((4, 8), float("nan")), "f"), "NaN"),
    (lambda m: from_embeddings("audio", torch.ones(4, 8), "f", reference=torch.ones(3, 6)), "width 6"),
    (lambda m: from_embeddings("audio", torch.ones(4, 8), "f", align="coral"), "needs reference samples"),
    (lambda m: binder.enroll(m, audio=_clips(3), align="coral"), "needs reference samples"),
    (lambda m: binder.enroll(m, audio=_clips(3), align="whiten"), r"align must be one of \['mean', 'coral'\]"),
    (lambda m: binder.enroll(m, audio=_clips(3), reference=_clips(3), align="coral", shrinkage=0), r"\(0, 1\]"),
    (lambda m: from_embeddings("audio", torch.ones(4, 8), "f", shrinkage=float("nan")), r"\(0, 1\]"),
    (lambda m: from_embeddings("audio", torch.ones(4, 8), "f")(torch.ones(2, 6)), r"expected \(N, 8\)"),
    (lambda m: from_embeddings("audio", torch.ones(4, 8), "f")(torch.full((2, 8), float("inf"))), "infinite"),
])
def test_bad_enrollments_are_refused(audio_model, call, match):
    with pytest.raises(BinderInputError, match=match):
        call(audio_model)


def test_bad_files_and_other_models_are_refused(audio_model, random_anchor, tmp_path: Path):
    fingerprint = audio_model.fingerprint("audio")
    path = from_embeddings("audio", torch.randn(5, audio_model.anchor.embed_dim), fingerprint).save(tmp_path / "e.st")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 9])
    with pytest.raises(ModelLoadError, match="not a readable enrollment file"):
        Enrollment.load(tmp_path / "cut.safetensors")
    edited = bytearray(data)
    edited[-5] ^= 0xFF  # one byte of the source's mean
    (tmp_path / "edited.safetensors").write_bytes(bytes(edited))
    with pytest.raises(ModelLoadError, match="edited after saving"):
        Enrollment.load(tmp_path / "edited.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Enrollment.load(tmp_path / "missing.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={**meta, "fingerprint": "0" * 64})
    with pytest.raises(ModelLoadError, match="edited after saving"):  # a field changed, the digest kept
        Enrollment.load(tmp_path / "other.safetensors")
    torch.manual_seed(5)
    other = binder.BindModel(random_anchor, {"audio": {}}).eval()
    with pytest.raises(ModelLoadError, match="another model"):
        Enrollment.load(path, model=other)
    with pytest.raises(ModelLoadError, match="another model"):
        Enrollment.load(path).embed(other, _clips(2))
    assert Enrollment.load(path, model=audio_model).n == 5


@pytest.fixture(scope="module")
def two_speakers(data_root: Path, tmp_path_factory) -> Path:
    """An FSDD folder of symlinks: takes 0, 5 and 6 of every digit by jackson and by lucas."""
    rec = tmp_path_factory.mktemp("two_speakers") / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for speaker in ("jackson", "lucas"):
        for digit in range(10):
            for take in (0, 5, 6):
                name = f"{digit}_{speaker}_{take}.wav"
                (rec / name).symlink_to(data_root / "fsdd" / "recordings" / name)
    return rec.parent


@pytest.mark.parametrize("align", ["coral", "mean"])
def test_recipe_scores_each_half_enrolled_on_the_other(audio_model, two_speakers: Path, tmp_path: Path, align):
    from binder.datasets.digits import CLASSNAMES, TEMPLATES
    from binder.datasets.fsdd import list_recordings

    from binder.evaluation.prompts import anchor_class_embeddings
    from binder.recipes.speakers import enrolled_top1

    model_dir = binder.save(audio_model, tmp_path / "model")
    recs = list_recordings(two_speakers)
    z = audio_model.embed(audio=[str(r.path) for r in recs], progress=False)["audio"]
    classes = anchor_class_embeddings(audio_model.anchor, CLASSNAMES, TEMPLATES)
    lucas = torch.tensor([r.speaker == "lucas" for r in recs])
    first = torch.tensor([r.take == 0 for r in recs])

    def right(scored: torch.Tensor, enrolled: torch.Tensor, reference: torch.Tensor) -> int:
        fix = from_embeddings("audio", z[enrolled], "f", z[reference], align=align)
        return int(((fix(z[scored]) @ classes.T).argmax(1) == torch.tensor([r.digit for r in recs])[scored]).sum())

    # lucas held out: halves {0} and {5, 6}, each enrolled on the other; jackson is the reference.
    expected = right(lucas & first, lucas & ~first, ~lucas) + right(lucas & ~first, lucas & first, ~lucas)
    got = enrolled_top1(model_dir, two_speakers, "lucas", align=align)
    assert got == pytest.approx(100 * expected / 30, abs=0.01)
    # The takes split: each speaker's take 0 scored, enrolled on their takes 5 and 6; reference: all takes 5-6.
    expected = right(lucas & first, lucas & ~first, ~first) + right(~lucas & first, ~lucas & ~first, ~first)
    got = enrolled_top1(model_dir, two_speakers, None, test_takes=5, align=align)
    assert got == pytest.approx(100 * expected / 20, abs=0.01)


def test_recipe_refuses_an_unknown_enrollment(compose, data_root, tmp_path):
    from binder import BinderConfigError
    from binder.training import train

    with pytest.raises(BinderConfigError, match="speakers.enroll must be one of"):
        train(compose(["experiment=leave_one_speaker_out", f"run_dir={tmp_path}", "speakers.enroll=whiten"]))


def test_table_has_the_enrolled_column():
    from binder.recipes.speakers import TAKES, format_table, table

    rows = {s: {"top1": t, "top5": 99.0, "n": 500, "seconds": 100.0, "enrolled": e} for s, t, e in
            [("george", 90.0, 91.0), ("lucas", 74.0, 80.0), ("nicolas", 95.0, 94.0)]}
    summary = table({**rows, TAKES: {"top1": 99.2, "top5": 100.0, "n": 250}}, "coral")
    assert summary["enrolled"] == {"align": "coral", "mean": pytest.approx(88.33, abs=0.01), "worst": "lucas",
                                   "worst_top1": 80.0}
    assert summary["met"] is False  # the goals judge the plain figure (lucas 74.0)
    lines = format_table(summary).splitlines()
    assert lines[0].endswith("| enrolled (coral) top-1 |") and lines[1].count("---:") == 5
    assert "| speaker lucas | 74.0 | 99.0 | 500 | 100 | 80.0 |" in lines
    assert any(line.startswith("| takes 0-4") and line.endswith("| 250 | 0 | |") for line in lines)
    assert "| **mean over speakers** | **86.3** | | | | **88.3** |" in lines
    assert "| worst speaker (lucas) | 74.0 | | | | 80.0 (lucas) |" in lines
    del rows["george"]["enrolled"]  # a fold without the figure: no column
    assert "enrolled" not in table(rows) and "enrolled" not in format_table(table(rows))


def test_compose_and_search_take_enrollments(audio_model, random_anchor, small_data_root: Path, tmp_path: Path,
                                             capsys):
    from binder.cli import main

    clips = sorted(str(p) for p in (small_data_root / "fsdd" / "recordings").glob("*.wav"))
    model_dir = binder.save(audio_model, tmp_path / "model")
    out = tmp_path / "speaker.safetensors"
    assert main(["enroll", "--model", str(model_dir), "--modality", "audio", *clips[:10], "-o", str(out)]) == 0
    assert "enrolled audio from 10 file(s)" in capsys.readouterr().out
    speaker = Enrollment.load(out, model=audio_model)
    assert torch.allclose(speaker.source_mean, binder.enroll(audio_model, audio=clips[:10]).source_mean, atol=1e-6)
    assert main(["enroll", "--model", str(model_dir), "--modality", "audio", *clips[:10], "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    coral = tmp_path / "coral.safetensors"
    assert main(["enroll", "--model", str(model_dir), "--modality", "audio", *clips[:10], "--reference", *clips[10:],
                 "--align", "coral", "-o", str(coral)]) == 0
    assert "(coral, reference 20)" in capsys.readouterr().out
    assert Enrollment.load(coral, model=audio_model).matrix is not None
    assert main(["enroll", "--model", str(model_dir), "--modality", "audio", *clips[:10], "--align", "coral",
                 "-o", str(tmp_path / "no.safetensors")]) == 2
    assert "needs reference samples" in capsys.readouterr().err and not (tmp_path / "no.safetensors").exists()

    query = audio_model.compose({"audio": clips[12]}, enrollments=[speaker])
    assert torch.allclose(query, speaker(audio_model.embed(audio=[clips[12]], progress=False)["audio"]), atol=1e-6)
    index = binder.Index.build(audio_model, clips, modality="audio", path=tmp_path / "clips.idx")
    plain = [h["path"] for h in index.search(audio=clips[12], k=30).to_records()]
    enrolled = [h["path"] for h in index.search(audio=clips[12], k=30, enrollments=[speaker]).to_records()]
    expected = [h["path"] for h in index.search_embeddings(query, k=30)[0].to_records()]
    assert enrolled == expected and sorted(plain) == sorted(enrolled)
    assert main(["search", str(tmp_path / "clips.idx"), "--model", str(model_dir), "--audio", clips[12], "-k", "30",
                 "--enrollment", str(out), "--json"]) == 0
    assert [h["path"] for h in json.loads(capsys.readouterr().out)["hits"]] == expected

    with pytest.raises(BinderInputError, match="the query has no audio"):
        audio_model.compose({"text": "seven"}, enrollments=[speaker])
    with pytest.raises(BinderInputError, match="one enrollment per modality"):
        audio_model.compose({"audio": clips[12]}, enrollments=[speaker, speaker])
    assert torch.allclose(binder.compose({"audio": clips[12]}, model=audio_model, enrollments=[speaker]), query)
    torch.manual_seed(5)
    other = binder.save(binder.BindModel(random_anchor, {"audio": {}}).eval(), tmp_path / "other")
    assert main(["search", str(tmp_path / "clips.idx"), "--model", str(other), "--audio", clips[12],
                 "--enrollment", str(out)]) == 2
    assert "made with another model" in capsys.readouterr().err


def test_coral_from_few_samples_warns(caplog):
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(100, 8, generator=g)
    with caplog.at_level("WARNING", logger="binder.enrollment"):
        from_embeddings("audio", torch.randn(60, 8, generator=g), "f", reference, align="coral")
        assert not caplog.records
        from_embeddings("audio", torch.randn(12, 8, generator=g), "f", reference, align="coral")
    assert "from 12 samples" in caplog.text and "align='mean' did better" in caplog.text
