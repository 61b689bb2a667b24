"""Every evaluation dataset read from a fixture in its exact on-disk layout and evaluated end to end
(random tiny encoders: the checks are on what is read, scored and written, not on accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import binder
from binder.errors import BinderInputError
from binder.evaluation.base import build_adapter
from eval_layouts import (
    write_audiocaps,
    write_audioset,
    write_clotho,
    write_ego4d,
    write_esc50,
    write_kinetics,
    write_llvip,
    write_msrvtt,
    write_nyud,
    write_sunrgbd,
    write_vggsound,
)

CLIP_BENCHMARK = {"dataset", "model", "pretrained", "task", "metrics", "language", "templates", "classnames"}
FEW = ["a {}.", "a photo of a {}."]


@pytest.fixture(scope="module")
def model(random_anchor):
    torch.manual_seed(3)
    return binder.BindModel(random_anchor, {"audio": {}, "depth": {}, "thermal": {}, "imu": {}}).eval()


def run(model, name, root, tmp_path, **kw):
    return binder.evaluate(model, name, root, cache_dir=tmp_path / "cache", progress=False, templates=FEW, **kw)


def check_classification(result, n, classnames=None):
    rec = result.record
    assert CLIP_BENCHMARK <= set(rec) and rec["task"] == "zeroshot_classification"
    assert rec["binder"]["n"] == n == len(result.predictions)
    if classnames is not None:
        assert rec["classnames"] == classnames
    if "acc1" in rec["metrics"] and not rec["binder"]["details"].get("per_group"):
        assert rec["metrics"]["acc1"] == pytest.approx(100 * np.mean([r["correct"] for r in result.predictions]))
    for row in result.predictions:
        assert len(row["top5"]) == min(5, len(rec["classnames"])) and row["top5_scores"] == sorted(row["top5_scores"],
                                                                                                    reverse=True)


def test_esc50_all_folds_mean(model, tmp_path):
    info = write_esc50(tmp_path / "ESC-50")
    result = run(model, "esc50", info["root"], tmp_path)
    check_classification(result, info["n"], info["classnames"])
    per_fold = result.record["binder"]["details"]["per_group"]
    assert sorted(per_fold) == [f"fold{i}" for i in range(1, 6)]
    assert result.metrics["acc1"] == pytest.approx(np.mean([f["acc1"] for f in per_fold.values()]))
    one = run(model, "esc50", info["root"], tmp_path, split="fold2")
    assert one.record["binder"]["n"] == 3 and one.metrics["acc1"] == pytest.approx(per_fold["fold2"]["acc1"])


def test_audioset_multilabel_map(model, tmp_path):
    info = write_audioset(tmp_path / "audioset")
    result = run(model, "audioset", info["root"], tmp_path)
    check_classification(result, info["n"], info["classnames"])
    assert set(result.metrics) == {"mean_average_precision", "classes_with_positives"}
    assert [s["id"] for s in result.skipped] == [info["missing"]]
    assert result.record["binder"]["protocol"]["choices"]["unknown_labels_ignored"] == 1
    truths = {r["id"]: r["true"] for r in result.predictions}
    assert truths["aaaaaaaaaaa_0.000"] == ["Speech", "Music"] and truths["ccccccccccc_5.000"] == ["Music"]


def test_vggsound_reads_audio_from_mp4(model, tmp_path):
    info = write_vggsound(tmp_path / "vggsound")
    result = run(model, "vggsound", info["root"], tmp_path)
    check_classification(result, info["n"], info["classnames"])
    assert [s["id"] for s in result.skipped] == ["vid00000004_000005"]


@pytest.mark.parametrize("name, writer, items, captions", [("clotho", write_clotho, 4, 20),
                                                           ("audiocaps", write_audiocaps, 2, 10)])
def test_audio_retrieval_both_directions(model, tmp_path, name, writer, items, captions):
    info = writer(tmp_path / name)
    result = run(model, name, info["root"], tmp_path)
    rec = result.record
    assert rec["task"] == "zeroshot_retrieval" and rec["binder"]["n"] == items
    assert {f"audio_retrieval_recall@{k}" for k in (1, 5, 10)} | {f"text_retrieval_recall@{k}" for k in (1, 5, 10)} \
        == set(rec["metrics"])
    t2a = [r for r in result.predictions if r["direction"] == "text->audio"]
    a2t = [r for r in result.predictions if r["direction"] == "audio->text"]
    assert len(t2a) == captions and len(a2t) == items
    assert rec["metrics"]["audio_retrieval_recall@1"] == pytest.approx(100 * np.mean([r["rank"] == 0 for r in t2a]))
    assert rec["metrics"]["audio_retrieval_recall@10"] == 100.0  # fewer items than 10
    if "missing" in info:
        assert [s["id"] for s in result.skipped] == [info["missing"]]


def test_nyud_hdf5_mat_with_other_as_max(model, tmp_path):
    info = write_nyud(tmp_path / "nyud")
    result = run(model, "nyud", info["root"], tmp_path)
    check_classification(result, info["n"])
    names = result.record["classnames"]
    assert len(names) == 10 and names[-1] == "other" and "living room" in names
    choices = result.record["binder"]["protocol"]["choices"]
    assert choices["other_members"] == ["basement", "cafe", "study room"]
    truths = [r["true"][0] for r in result.predictions]
    assert truths == ["bedroom", "office", "other", "other", "bathroom"]  # study_room, basement -> other
    single = run(model, "nyud", info["root"], tmp_path, options={"other": "name", "other_name": "others"})
    assert single.record["classnames"][-1] == "others"
    assert single.metrics != result.metrics or single.predictions != result.predictions


def test_sunrgbd_official_split_and_19_classes(model, tmp_path):
    info = write_sunrgbd(tmp_path)
    result = run(model, "sunrgbd", info["root"], tmp_path)
    check_classification(result, info["n"])
    assert len(result.record["classnames"]) == 19
    assert result.record["binder"]["protocol"]["choices"]["frames_of_other_scenes_not_scored"] == info["other"]
    assert [s["id"] for s in result.skipped] == [info["missing"]]


def test_sunrgbd_depth_decoding(tmp_path):
    from binder.evaluation.datasets.sunrgbd import read_depth_png
    from PIL import Image

    mm = np.array([[500, 1234], [9000, 0]], dtype=np.uint16)
    Image.fromarray(((mm << 3) | (mm >> 13)).astype(np.uint16)).save(tmp_path / "d.png")
    assert np.allclose(read_depth_png(tmp_path / "d.png"), [[0.5, 1.234], [8.0, 0.0]])  # capped at 8 m


def test_llvip_crops_and_background_boxes(model, tmp_path):
    info = write_llvip(tmp_path / "LLVIP")
    result = run(model, "llvip", info["root"], tmp_path)
    persons = [r for r in result.predictions if r["true"] == ["person"]]
    backgrounds = [r for r in result.predictions if r["true"] == ["background"]]
    assert len(persons) == info["persons"] and len(backgrounds) == info["persons"]
    assert result.record["classnames"] == ["person", "background"]
    adapter = build_adapter("llvip")
    split = adapter.read(info["root"], "test")
    from binder.evaluation.datasets.llvip import overlaps, read_voc

    for rec in split.records:
        name, box = rec.id.split("#")[0], rec.source[1]
        _, people = read_voc(info["root"] / "Annotations" / name.replace(".jpg", ".xml"))
        if rec.label == 1:
            assert not any(overlaps(box, p) for p in people)
            person = people[int(rec.id.split("background")[1])]
            assert (box[2] - box[0], box[3] - box[1]) == (person[2] - person[0], person[3] - person[1])
        assert adapter.load(rec).shape == (box[3] - box[1], box[2] - box[0])
    again = build_adapter("llvip").read(info["root"], "test")
    assert [r.source for r in again.records] == [r.source for r in split.records]  # seeded


def test_llvip_real_samples(model, data_root, tmp_path):
    """The real LLVIP samples (flat infrared/ folder) with annotations written here."""
    from eval_layouts import voc_xml

    src = data_root / "llvip-samples"
    if not src.is_dir():
        pytest.skip("llvip-samples not in the data root")
    root = tmp_path / "llvip"
    root.mkdir()
    (root / "infrared").symlink_to(src / "infrared", target_is_directory=True)
    (root / "Annotations").mkdir()
    names = sorted(p.stem for p in (src / "infrared").glob("*.jpg"))[:4]
    for i, name in enumerate(names):
        (root / "Annotations" / f"{name}.xml").write_text(
            voc_xml(name, (1280, 1024), [(300 + 40 * i, 400, 380 + 40 * i, 620)]))
    result = run(model, "llvip", root, tmp_path)
    assert result.record["binder"]["n"] == 8 and len(result.skipped) == len(list((src / "infrared").glob("*.jpg"))) - 4
    assert all("no annotation" in s["reason"] for s in result.skipped)


def test_ego4d_imu_windows(model, tmp_path):
    info = write_ego4d(tmp_path / "ego4d")
    result = run(model, "ego4d-imu", info["root"], tmp_path, split="all")
    assert result.record["classnames"] == info["classnames"]  # single-scenario videos with IMU (u3 has two, u4 none)
    assert result.record["binder"]["n"] == 4  # u1, u2: windows at 3.0 and 6.5 s
    assert sorted(s["id"] for s in result.skipped) == ["u1@19.000", "u2@19.000"]
    assert all("leaves the IMU recording" in s["reason"] for s in result.skipped)
    samples, rate = build_adapter("ego4d-imu").load(build_adapter("ego4d-imu").read(info["root"], "all").records[0])
    assert samples.shape == (6, 1000) and rate == pytest.approx(200.0, rel=1e-3)
    assert np.allclose(samples[3:, 0], np.sin(0.5 + np.arange(3)), atol=1e-4)  # gyro after accelerometer


def test_kinetics_video_through_the_anchor(model, tmp_path):
    info = write_kinetics(tmp_path / "k400")
    result = run(model, "kinetics400", info["root"], tmp_path)
    check_classification(result, info["n"], info["classnames"])
    assert [s["id"] for s in result.skipped] == ["k0000000003_000005_000015"]


def test_msrvtt_1k_a_retrieval(model, tmp_path):
    info = write_msrvtt(tmp_path / "msrvtt")
    result = run(model, "msrvtt", info["root"], tmp_path)
    assert result.record["binder"]["protocol"]["name"] == "msrvtt-1k-A-imagebind"
    assert "video_retrieval_recall@1" in result.metrics and result.record["binder"]["n"] == info["n"]


def test_class_folders_and_manifest(model, tmp_path):
    from eval_layouts import tone, write_csv

    for label, freq in (("dog_bark", 300), ("siren", 900)):
        for i in range(2):
            tone(tmp_path / "data" / "test" / label / f"{i}.wav", freq + i)
    folder = run(model, "folder", tmp_path / "data", tmp_path, split="test", options={"modality": "audio"})
    check_classification(folder, 4, ["dog bark", "siren"])
    rows = [[f"test/dog_bark/{i}.wav", "dog_bark", f"a dog {i}"] for i in range(2)]
    rows += [[f"test/siren/{i}.wav", "siren", f"a siren {i}"] for i in range(2)]
    write_csv(tmp_path / "data" / "labels.csv", [r[:2] for r in rows], ["path", "label"])
    write_csv(tmp_path / "data" / "captions.csv", [[r[0], r[2]] for r in rows], ["path", "caption"])
    by_label = run(model, "manifest", tmp_path / "data" / "labels.csv", tmp_path, options={"modality": "audio"})
    assert by_label.predictions == folder.predictions or by_label.metrics == folder.metrics
    by_caption = run(model, "manifest", tmp_path / "data" / "captions.csv", tmp_path, options={"modality": "audio"})
    assert by_caption.record["task"] == "zeroshot_retrieval" and by_caption.record["binder"]["n"] == 4
    with pytest.raises(BinderInputError, match="needs the option modality"):
        run(model, "folder", tmp_path / "data", tmp_path)
