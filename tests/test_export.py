"""Export: ONNX (dynamic batch, Deep-Emotion's spatial transformer included) and TorchScript
match PyTorch; predict accepts the files; failures leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from support.trained import synthetic_faces, train_checkpoint

from ray_fer import export
from ray_fer.predict import load_predictor


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"deep_emotion": str(train_checkpoint(root / "de")),
            "caf": str(train_checkpoint(root / "caf", "caf", steps=5, small_cnn_width=8))}


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces()[0][:5]


def _inputs(faces: np.ndarray) -> np.ndarray:
    return faces.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1


def test_onnx_matches_pytorch_on_any_batch_size_with_a_real_warp(checkpoints, faces,
                                                                 tmp_path):
    trained = export.load_trained(checkpoints["deep_emotion"])
    with torch.no_grad():  # make the spatial transformer warp for sure, not the identity
        trained.model.localization[-1].weight.normal_(0, 0.05)
    x = torch.from_numpy(_inputs(faces))
    assert (trained.model.theta(x) - torch.tensor([[1.0, 0, 0], [0, 1, 0]])).abs().max() > 0.01
    path = tmp_path / "de.onnx"
    assert export.export_onnx(trained, path) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        got = session.run(None, {"image": x[:n].numpy()})[0]
        with torch.no_grad():
            want = trained.model(x[:n]).numpy()
        assert got.shape == (n, 7) and np.abs(got - want).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map["ray_fer"]
    assert export.ModelMeta.from_json(meta, "x") == trained.meta


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_on_an_exported_file_matches_the_checkpoint(checkpoints, faces, tmp_path,
                                                            fmt):
    for name, checkpoint in checkpoints.items():
        out = tmp_path / f"{name}{export.SUFFIXES[fmt]}"
        assert export.main([checkpoint, "--format", fmt, "--out", str(out)]) == 0
        exported = load_predictor(str(out))
        original = load_predictor(checkpoint)
        assert exported.meta == original.meta
        np.testing.assert_allclose(exported.scores(faces), original.scores(faces), atol=1e-5)
    assert exported.meta.outputs == ["valence", "arousal"]


def test_a_failed_parity_check_leaves_no_file(checkpoints, tmp_path):
    trained = export.load_trained(checkpoints["deep_emotion"])
    path = tmp_path / "de.onnx"
    with pytest.raises(ValueError, match="differs from eager PyTorch"):
        export.export_onnx(trained, path, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_not_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert export.main([str(tmp_path), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a ray_fer checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_description_from_an_older_export_still_reads():
    """Files exported before the description dropped ``family`` keep loading."""
    meta = export.ModelMeta(model="deep_emotion", task="classify", class_names=["a", "b"],
                            outputs=["a", "b"], image_size=48, channels=1)
    older = json.loads(meta.to_json()) | {"family": "deep_emotion"}
    assert export.ModelMeta.from_json(json.dumps(older), "old.onnx") == meta
    with pytest.raises(ValueError, match="old.onnx: unreadable"):
        export.ModelMeta.from_json('["not", "a", "mapping"]', "old.onnx")
