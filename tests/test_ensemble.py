"""Ensembles: chosen on validation predictions only, written as one checkpoint that
evaluate (with TTA), predict and export (one ONNX graph) take like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.tiny_shards import write_tiny_shards

from ray_fer import ensemble as E
from ray_fer.checkpoint import Progress, save_checkpoint
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import read_split_faces
from ray_fer.explain.run import model_inputs
from ray_fer.methods.registry import build_model, method_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_tiny_shards(tmp_path_factory.mktemp("tiny") / "shards")


def _train(folder: Path, shards: str, model: str, seed: int, steps: int, **options) -> str:
    """A short-trained classifier of the tiny shards, saved as a run's checkpoint."""
    torch.manual_seed(seed)
    faces, labels, classes = read_split_faces(shards, "train", per_class=10**6)
    cfg = method_config(model, flags={"data.uri": shards, "run.name": folder.name,
                                      **{f"model.options.{k}": v
                                         for k, v in options.items()}})
    info = DataInfo(classes, 48, 1)
    net = build_model(model, num_classes=4, in_channels=1, image_size=48, **options)
    x, y = model_inputs(faces, 48, 1), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        batch = torch.randint(len(x), (32,))
        loss = F.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    save_checkpoint(folder, cfg=cfg, info=info, modules={"model": net}, optimizers={},
                    schedulers={}, progress=Progress(next_epoch=1), metrics={},
                    metric="val_accuracy", mode="max")
    return str(folder)


@pytest.fixture(scope="module")
def members(shards, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("members")
    return [_train(root / "de0", shards, "deep_emotion", 0, 30, dropout=0.0),
            _train(root / "de1", shards, "deep_emotion", 1, 10, dropout=0.0),
            _train(root / "vgg", shards, "vgg_bn", 2, 20, hidden=32)]


@pytest.fixture(scope="module")
def built(members, tmp_path_factory) -> tuple[dict, str]:
    out = str(tmp_path_factory.mktemp("ens") / "top2")
    return E.build(members, out=out, top=2), out


def test_ensemble_is_chosen_and_scored_on_validation_rows_only(built, shards):
    report, out = built
    assert report["selected_on"] == {"data": shards, "split": "val", "rows": 64}
    assert len(report["members"]) == 2 and report["rule"] == "top2"
    ranked = sorted(report["candidates"], key=lambda c: -c["val_accuracy"])
    assert {m["checkpoint"] for m in report["members"]} == {c["checkpoint"]
                                                           for c in ranked[:2]}
    saved = json.loads((Path(out) / "ensemble.json").read_text())
    assert saved["val_accuracy"] == report["val_accuracy"]


def test_evaluate_reads_the_ensemble_like_any_checkpoint(built, local_ray):
    from ray_fer.evaluate import evaluate

    report, out = built
    metrics, confusion = evaluate(out, split="val", tta="flip")
    assert metrics["val_accuracy"] == pytest.approx(report["val_accuracy"], abs=1e-6)
    assert confusion.sum() == 64 and 0 <= metrics["tta"]["accuracy"] <= 1


def test_ensemble_exports_as_one_onnx_graph_and_predicts(built, tmp_path):
    from ray_fer import export
    from ray_fer.predict import load_predictor

    _, out = built
    trained = export.load_trained(out)
    assert trained.meta.model == "ensemble"
    assert export.export_onnx(trained, tmp_path / "ens.onnx") < 1e-4
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1), np.uint8)
    from_checkpoint = load_predictor(out).scores(faces)
    from_onnx = load_predictor(str(tmp_path / "ens.onnx")).scores(faces)
    assert np.allclose(from_checkpoint, from_onnx, atol=1e-4)


def test_a_search_folder_gives_its_trials_best_first(members, tmp_path):
    (tmp_path / "results.csv").write_text(
        "trial_id,val_accuracy,checkpoint\n"
        f"b,0.9,{members[2]}\na,0.8,{members[0]}\nc,0.1,\n")
    assert E.candidate_checkpoints([str(tmp_path)]) == [members[2], members[0]]


def test_existing_output_and_mixed_protocols_are_refused(members, tmp_path, shards):
    from ray_fer.config import ConfigError

    with pytest.raises(ConfigError, match="already exists"):
        E.build(members, out=str(tmp_path), top=1)
    other = write_tiny_shards(tmp_path / "other", seed=1)
    stranger = _train(tmp_path / "stranger", other, "deep_emotion", 0, 1)
    with pytest.raises(ConfigError, match="validated on different data"):
        E.build([members[0], stranger], out=str(tmp_path / "mixed"), top=1)
    assert not (tmp_path / "mixed").exists()


def test_cli_prints_one_error_line_for_a_missing_rule(members, capsys):
    with pytest.raises(SystemExit):
        E.main(members)
    assert "one of the arguments --top --greedy is required" in capsys.readouterr().err


def test_an_ensemble_is_assembled_not_trained(capsys):
    from ray_fer.train.__main__ import main as train_main

    assert train_main(["ensemble"]) == 2
    assert "unknown method 'ensemble'" in capsys.readouterr().err
