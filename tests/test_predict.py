"""Predict on real photos: faces found in JAFFE / Taiwanese images and in a two-face photo,
cropped as ingestion crops them; folders, videos, no-face images and clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.trained import train_checkpoint

from ray_fer.data.detectors import mtcnn_installed
from ray_fer.data.faces import prepare_face
from ray_fer.data.formats.base import SourceItem, decode_image
from ray_fer.predict import (
    ANNOTATED_DIR,
    PREDICTIONS_FILE,
    PredictError,
    list_images,
    load_predictor,
    main,
    predict,
    predict_image,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(train_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_epoch-0000"))


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint)


@pytest.fixture(scope="module")
def photos(real_dataset) -> list[Path]:
    """Three JAFFE and three Taiwanese photos (from ../shared/datasets; skipped if absent)."""
    jaffe = sorted(real_dataset("jaffe").rglob("*.tiff"))[::70][:3]
    taiwanese = sorted(real_dataset("taiwanese").rglob("*.jpg"))[::400][:3]
    assert len(jaffe) == len(taiwanese) == 3
    return jaffe + taiwanese


def _check_face(face: dict, image: np.ndarray) -> None:
    x, y, w, h = face["box"]
    assert x >= 0 and y >= 0 and x + w <= image.shape[1] and y + h <= image.shape[0]
    assert face["label"] in face["probabilities"]
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert face["confidence"] == max(face["probabilities"].values())


def test_finds_the_face_in_jaffe_and_taiwanese_photos(predictor, photos):
    for path in photos:
        image = decode_image(path)
        faces = predict_image(predictor, image)
        assert len(faces) >= 1, path
        _check_face(faces[0], image)


def test_faces_are_cropped_and_scored_as_ingestion_crops_them(predictor, photos):
    image = decode_image(photos[0])
    (face,) = predict_image(predictor, image)
    ingested = prepare_face(image, SourceItem(source_file="x", needs_detection=True),
                            predictor.spec)
    expected = predictor.scores(ingested[None])[0]
    np.testing.assert_allclose(list(face["probabilities"].values()), expected, atol=1e-6)


def test_two_faces_pasted_side_by_side_are_both_found(predictor, photos):
    left, right = (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photos[:2])
    height = min(left.shape[0], right.shape[0])
    pair = np.concatenate([left[:height], right[:height]], axis=1)
    faces = predict_image(predictor, pair)
    assert len(faces) == 2
    centres = sorted(f["box"][0] + f["box"][2] / 2 for f in faces)
    assert centres[0] < left.shape[1] < centres[1]


def test_folder_run_writes_json_lines_annotations_and_reports_no_face(checkpoint, photos,
                                                                      tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), cv2.imread(str(photos[0])))
    cv2.imwrite(str(folder / "sub" / "b.jpg"), cv2.imread(str(photos[3])))
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 160, 3), 128, np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    summary = predict(checkpoint, folder, tmp_path / "out", progress=False)
    assert (summary.images, summary.faces, summary.no_face, summary.errors) == (3, 2, 1, 1)
    lines = [json.loads(line) for line in
             (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()]
    by_name = {Path(line["source"]).name: line for line in lines}
    assert set(by_name) == {"a.png", "b.jpg", "blank.png", "broken.png"}
    assert by_name["blank.png"]["no_face"] is True and by_name["blank.png"]["faces"] == []
    assert by_name["a.png"]["no_face"] is False and len(by_name["a.png"]["faces"]) == 1
    assert "not a decodable image" in by_name["broken.png"]["error"]
    annotated = tmp_path / "out" / ANNOTATED_DIR
    assert (annotated / "sub" / "b.png").is_file() and (annotated / "blank.png").is_file()


def test_video_frames_are_sampled_at_the_chosen_rate(checkpoint, photos, tmp_path):
    frame = cv2.imread(str(photos[0]))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                             (frame.shape[1], frame.shape[0]))
    for _ in range(20):  # 2 s at 10 frames/s
        writer.write(frame)
    writer.release()
    summary = predict(checkpoint, video, tmp_path / "out", rate=2, progress=False)
    lines = [json.loads(line) for line in
             (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 5, 10, 15]
    assert [line["time_s"] for line in lines] == [0, 0.5, 1.0, 1.5]
    assert summary.faces == 4
    assert (tmp_path / "out" / ANNOTATED_DIR / "clip.mp4").stat().st_size > 0


def test_a_non_image_file_and_an_empty_folder_are_clear_errors(checkpoint, tmp_path, capsys):
    text = tmp_path / "labels.txt"
    text.write_text("happy\n")
    assert main([checkpoint, str(text), "--out", str(tmp_path / "o1")]) == 2
    assert "labels.txt: not a decodable image" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([checkpoint, str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert "empty: no images found" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(PredictError, match="no such model file"):
        load_predictor(str(tmp_path / "missing.onnx"))


def test_a_folder_run_lists_no_file_a_symlink_leads_out_of_the_folder_to(tmp_path):
    inside, outside = tmp_path / "photos", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    pixels = np.full((64, 64, 3), 128, np.uint8)
    cv2.imwrite(str(inside / "a.png"), pixels)
    cv2.imwrite(str(outside / "secret.png"), pixels)
    (inside / "b.png").symlink_to(outside / "secret.png")
    (inside / "nested").symlink_to(outside, target_is_directory=True)
    (inside / "c.png").symlink_to(inside / "a.png")  # stays inside: listed
    assert list_images(inside) == [inside / "a.png", inside / "c.png"]


@pytest.mark.parametrize("detector", ["haar", pytest.param("mtcnn", marks=pytest.mark.skipif(
    not mtcnn_installed(), reason="facenet-pytorch not installed (extra 'detect')"))])
def test_the_chosen_detector_finds_the_faces_and_is_named(checkpoint, photos, tmp_path, capsys,
                                                          detector):
    code = main([checkpoint, str(photos[0]), "--out", str(tmp_path / "out"), "--detector",
                 detector, "--no-annotate"])
    assert code == 0
    assert f"1 face(s) by {detector}" in capsys.readouterr().out
    (line,) = (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()
    assert len(json.loads(line)["faces"]) == 1


def test_mtcnn_without_its_package_is_one_error_line(checkpoint, photos, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    code = main([checkpoint, str(photos[0]), "--out", str(tmp_path / "out"), "--detector",
                 "mtcnn"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "pip install 'ray_fer[detect]'" in err
    assert not (tmp_path / "out").exists()


def _blank_images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.full((80, 80), 128, np.uint8))
    return folder


def test_a_run_into_an_earlier_runs_out_replaces_its_output(checkpoint, tmp_path):
    """Old annotated images stayed beside the new ones, as if predicted now."""
    out = tmp_path / "out"
    predict(checkpoint, _blank_images(tmp_path / "first", "old.png"), out, progress=False)
    assert (out / ANNOTATED_DIR / "old.png").is_file()
    (out / "notes.md").write_text("the user's own file")
    predict(checkpoint, _blank_images(tmp_path / "second", "new.png"), out, progress=False)
    assert sorted(p.name for p in (out / ANNOTATED_DIR).rglob("*")) == ["new.png"]
    lines = (out / PREDICTIONS_FILE).read_text().splitlines()
    assert len(lines) == 1 and "new.png" in lines[0]
    assert (out / "notes.md").read_text() == "the user's own file"


def test_an_out_holding_annotated_images_predict_did_not_write_is_refused(checkpoint,
                                                                         tmp_path, capsys):
    out = tmp_path / "out"
    (out / ANNOTATED_DIR).mkdir(parents=True)
    (out / ANNOTATED_DIR / "mine.png").write_bytes(b"kept")
    source = _blank_images(tmp_path / "in", "a.png")
    assert main([checkpoint, str(source), "--out", str(out)]) == 2
    assert f"--out {out}: holds {ANNOTATED_DIR}/ but no {PREDICTIONS_FILE}" in (
        capsys.readouterr().err)
    assert (out / ANNOTATED_DIR / "mine.png").read_bytes() == b"kept"


def test_an_image_above_the_pixel_cap_is_refused_before_it_is_decoded(checkpoint, tmp_path,
                                                                      capsys, monkeypatch):
    from support.images import huge_png_header

    from ray_fer.data.formats.base import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

    monkeypatch.setenv(MAX_PIXELS_ENV, str(MAX_IMAGE_PIXELS))  # restored: --max-pixels sets it
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_png_header())
    assert main([checkpoint, str(bomb), "--out", str(tmp_path / "o1")]) == 2
    assert f"{bomb}: more than" in capsys.readouterr().err
    source = _blank_images(tmp_path / "in", "a.png", "b.png")
    summary = predict(checkpoint, source, tmp_path / "o2", progress=False)
    assert (summary.images, summary.errors) == (2, 0)
    assert main([checkpoint, str(source), "--out", str(tmp_path / "o3"), "--max-pixels",
                 "6399"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "o3" / PREDICTIONS_FILE).read_text().splitlines()]
    assert ["80 x 80 pixels, above the limit of 6,399" in x["error"] for x in lines] == [True] * 2


@pytest.mark.parametrize("rate", ["inf", "nan", "0"])
def test_a_video_rate_that_is_not_a_finite_positive_number_is_refused(checkpoint, tmp_path,
                                                                      capsys, rate):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")  # refused before it is opened
    assert main([checkpoint, str(video), "--rate", rate, "--out", str(tmp_path / "o")]) == 2
    assert "--rate must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
