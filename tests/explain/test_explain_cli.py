"""The explain command and the training hook: grids, raw maps, per-class averages, TensorBoard."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from support.trained import synthetic_faces

from ray_fer.data.shards import FaceRow, ShardWriter, read_split_faces
from ray_fer.explain.__main__ import main
from ray_fer.explain.run import (
    ExplainOptions,
    class_average,
    explain_to_tensorboard,
    parse_targets,
)
from ray_fer.storage import resolve


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, faces):
    folder = tmp_path_factory.mktemp("faces")
    for i, face in enumerate(faces[0][:3]):
        cv2.imwrite(str(folder / f"face{i}.png"), face)
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The synthetic faces as a shard set (a train and a val split)."""
    images, labels, va, classes = synthetic_faces()
    path = tmp_path_factory.mktemp("shards")
    writer = ShardWriter(resolve(path), (48, 48, 1), classes, rows_per_shard=16)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        split = "val" if i % 3 == 0 else "train"
        writer.add(FaceRow(image=image, label=int(label), label_name=classes[label],
                           soft_label=np.eye(len(classes))[label], valence=float(va[i, 0]),
                           arousal=float(va[i, 1]), subject_id=f"s{i % 3}", split=split,
                           fold=-1, dataset="synthetic", source_file=f"{i}.png"))
    writer.finish(dataset="synthetic", format="synthetic", folds={})
    return str(path)


def test_cli_writes_a_grid_raw_maps_and_a_description(checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    assert main([checkpoint, "--images", str(image_folder), "--method",
                 "occlusion,gradcam,guided_backprop,guided_gradcam", "--out", str(out)]) == 0
    maps = np.load(out / "maps.npy")
    assert maps.shape == (3, 4, 1, 48, 48)  # images, methods, targets (predicted), y, x
    record = json.loads((out / "maps.json").read_text())
    assert record["methods"][0] == "occlusion" and record["targets"] == ["predicted"]
    assert len(record["images"]) == 3 and len(record["predictions"]) == 3
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[1] == 112 * (1 + 2 * 4) + 46 and grid.shape[0] > 3 * 112  # + scale


def test_a_folder_named_after_a_class_gives_the_true_label(checkpoint, faces, tmp_path):
    folder = tmp_path / "faces"
    for name in ("Happy", "sad", "unsorted"):
        (folder / name).mkdir(parents=True)
        cv2.imwrite(str(folder / name / "x.png"), faces[0][0])
    out = tmp_path / "out"
    assert main([checkpoint, "--images", str(folder), "--method", "gradcam", "--target",
                 "predicted", "--out", str(out)]) == 0
    record = json.loads((out / "maps.json").read_text())
    truth = dict(zip((p.split("/")[-2] for p in record["images"]), record["true_labels"],
                     strict=True))
    assert truth == {"Happy": "happy", "sad": "sad", "unsorted": None}


def test_explain_detects_faces_in_photos_with_the_chosen_detector(checkpoint, real_dataset,
                                                                  tmp_path):
    photo = sorted(real_dataset("jaffe").glob("*.tiff"))[0]
    out = tmp_path / "out"
    assert main([checkpoint, "--images", str(photo), "--detect", "--detector", "haar",
                 "--method", "gradcam", "--out", str(out)]) == 0
    assert np.load(out / "maps.npy").shape == (1, 1, 7, 48, 48)


def test_one_method_gives_one_column_per_class(checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    assert main([checkpoint, "--images", str(image_folder / "face0.png"), "--method",
                 "gradcam", "--out", str(out)]) == 0
    assert np.load(out / "maps.npy").shape == (1, 1, 7, 48, 48)
    assert json.loads((out / "maps.json").read_text())["targets"][3] == "happy"


def test_per_class_average_over_a_split(checkpoint, shards, tmp_path):
    out = tmp_path / "out"
    assert main([checkpoint, "--split", "val", "--data", shards, "--per-class", "1",
                 "--method", "gradcam,occlusion", "--out", str(out)]) == 0
    record = json.loads((out / "class_average.json").read_text())
    assert record["counts"] == [1] * 7 and record["rows"] == ["gradcam", "occlusion"]
    assert np.load(out / "class_average.npy").shape == (2, 7, 48, 48)
    assert cv2.imread(str(out / "class_average.png")) is not None


def test_class_average_is_the_mean_of_each_class_maps(de_subject, shards):
    faces, labels, classes = read_split_faces(shards, "train", per_class=2)
    assert np.bincount(labels, minlength=7).tolist() == [2] * 7
    average = class_average(de_subject, faces, labels, classes, ["gradcam"],
                            ExplainOptions(batch_size=5), image_size=48, channels=1)
    single = class_average(de_subject, faces[labels == 3][:1], labels[labels == 3][:1], classes,
                           ["gradcam"], image_size=48, channels=1)
    other = class_average(de_subject, faces[labels == 3][1:], labels[labels == 3][1:], classes,
                          ["gradcam"], image_size=48, channels=1)
    np.testing.assert_allclose(average.maps[0, 3], (single.maps[0, 3] + other.maps[0, 3]) / 2,
                               rtol=1e-4, atol=1e-5)
    assert average.mean_faces.shape == (7, 48, 48, 1)


def test_va_model_is_explained_for_valence_and_arousal(va_subject, images):
    assert parse_targets(None, va_subject, ["gradcam"]) == ["valence", "arousal"]
    with pytest.raises(ValueError, match="unknown target 'predicted'"):
        parse_targets("predicted", va_subject, ["gradcam"])


def test_bad_method_and_missing_inputs_are_clear_errors(checkpoint, tmp_path, capsys):
    assert main([checkpoint, "--images", str(tmp_path), "--method", "saliency"]) == 2
    assert "unknown method(s) saliency" in capsys.readouterr().err
    assert main([checkpoint, "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_explain_to_tensorboard_writes_an_image(de_subject, classifier, images, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    explained = explain_to_tensorboard(writer, de_subject, images[:2], 5,
                                       class_names=classifier.meta.class_names)
    writer.close()
    assert explained.maps.shape == (2, 2, 1, 48, 48)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("explain")
    assert image.step == 5 and image.width == 112 * 5 + 46


def test_tensorboard_grid_shows_true_labels_where_given(de_subject, classifier, images,
                                                        tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for tag, labels in (("plain", None), ("labelled", [3, 4])):
        explain_to_tensorboard(writer, de_subject, images[:2], 1, tag=tag,
                               class_names=classifier.meta.class_names, labels=labels)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    grids = {tag: cv2.imdecode(np.frombuffer(events.Images(tag)[0].encoded_image_string,
                                             np.uint8), cv2.IMREAD_COLOR)
             for tag in ("plain", "labelled")}
    top = slice(18, 18 + 20)  # the top of the first input cell: "true happy"
    assert (grids["plain"][top, :112] != grids["labelled"][top, :112]).any()
