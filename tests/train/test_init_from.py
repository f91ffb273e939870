"""``model.init``: a run starts from another run's weights, the classifier matched by class
name, and a checkpoint that does not fit is refused before Ray starts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.tiny_shards import write_tiny_shards
from support.trained import train_checkpoint

from ray_fer.checkpoint import copy_folder, load_checkpoint, peek_checkpoint
from ray_fer.config import ConfigError
from ray_fer.data.formats.ckplus import CLASS_NAMES as CK_CLASSES
from ray_fer.data.formats.fer2013 import CLASS_NAMES as FER_CLASSES
from ray_fer.data.info import DataInfo
from ray_fer.methods.registry import get_method, method_config
from ray_fer.storage import resolve
from ray_fer.train import epoch, plan
from ray_fer.train.init_from import check_init, class_rows, load_matching, output_layer


@pytest.fixture(scope="module")
def fer_checkpoint(tmp_path_factory):
    """deep_emotion trained a few steps on faces labelled with FER2013's seven classes."""
    return train_checkpoint(tmp_path_factory.mktemp("fer") / "ckpt", steps=3)


def _build(classes, init: str = "", channels: int = 1, seed: int = 1):
    cfg = method_config("deep_emotion", flags={"model.init": init, "train.seed": seed,
                                               "data.uri": "unused"})
    info = DataInfo(class_names=list(classes), image_size=48, channels=channels)
    state = epoch.build_state(get_method("deep_emotion"), cfg, info, torch.device("cpu"), 1)
    return state.modules["model"]


def test_ck_plus_run_starts_from_fer2013_weights_with_head_rows_matched_by_name(fer_checkpoint):
    """Both label sets have 7 classes in other orders and spellings: positions would be
    wrong. CK+'s anger/sadness take FER2013's angry/sad rows; contempt stays fresh."""
    saved = load_checkpoint(fer_checkpoint).state["modules"]["model"]
    fresh = _build(CK_CLASSES).state_dict()
    model = _build(CK_CLASSES, init=str(fer_checkpoint)).state_dict()
    head = output_layer(_build(CK_CLASSES), len(CK_CLASSES))
    for key, tensor in model.items():
        if not key.startswith(f"{head}."):
            assert torch.equal(tensor, saved[key]), key
    for key in (f"{head}.weight", f"{head}.bias"):
        for new, old in (("anger", "angry"), ("sadness", "sad"), ("surprise", "surprise")):
            assert torch.equal(model[key][CK_CLASSES.index(new)],
                               saved[key][FER_CLASSES.index(old)]), (key, new)
        contempt = CK_CLASSES.index("contempt")
        assert torch.equal(model[key][contempt], fresh[key][contempt])
        assert not torch.equal(model[key][contempt], saved[key][contempt])


def test_a_head_over_more_classes_gets_the_shared_rows_and_fresh_new_ones(fer_checkpoint):
    classes = [*FER_CLASSES, "contempt"]  # FER+'s eight
    saved = load_checkpoint(fer_checkpoint).state["modules"]["model"]
    fresh = _build(classes).state_dict()
    model = _build(classes, init=str(fer_checkpoint)).state_dict()
    weight = f"{output_layer(_build(classes), len(classes))}.weight"
    assert torch.equal(model[weight][:7], saved[weight])
    assert torch.equal(model[weight][7], fresh[weight][7])


def test_class_rows_pair_only_the_emotions_both_sets_know():
    assert class_rows(["Happiness", "contempt", "fear"], list(FER_CLASSES)) == [
        (0, FER_CLASSES.index("happy")), (2, FER_CLASSES.index("fear"))]


def test_a_checkpoint_of_another_model_or_input_is_refused_naming_what_differs(
        fer_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.init.*holds a vgg_bn model.*deep_emotion"):
        _build(FER_CLASSES, init=str(train_checkpoint(tmp_path / "vgg", "vgg_bn", steps=1)))
    with pytest.raises(ConfigError, match=r"model\.init.*does not fit.*of another shape: "):
        _build(FER_CLASSES, init=str(fer_checkpoint), channels=3)
    with pytest.raises(ConfigError, match=r"model\.init.*not a ray_fer checkpoint"):
        _build(FER_CLASSES, init=str(tmp_path))


def test_plan_run_refuses_a_checkpoint_that_does_not_fit_before_ray_starts(
        fer_checkpoint, tmp_path):
    shards = write_tiny_shards(tmp_path / "shards")
    cfg = method_config("deep_emotion", flags={
        "data.uri": shards, "data.channels": 3, "model.init": str(fer_checkpoint),
        "run.storage": str(tmp_path / "runs"), "run.name": "finetune"})
    with pytest.raises(ConfigError, match="does not fit"):
        plan.plan_run(cfg)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_fresh_classes_are_named_and_a_head_of_another_width_changes_nothing(fer_checkpoint):
    saved = dict(load_checkpoint(fer_checkpoint).state["modules"]["model"])
    model = _build(CK_CLASSES)
    assert load_matching(model, saved, new_classes=list(CK_CLASSES),
                         old_classes=list(FER_CLASSES), where="ckpt") == ["contempt"]
    weight = f"{output_layer(model, len(CK_CLASSES))}.weight"
    saved[weight] = torch.zeros(7, saved[weight].shape[1] + 1)  # the head's inputs differ
    before = {k: v.clone() for k, v in _build(CK_CLASSES).state_dict().items()}
    fresh = _build(CK_CLASSES)
    with pytest.raises(ConfigError, match=f"of another shape: {weight}"):
        load_matching(fresh, saved, new_classes=list(CK_CLASSES),
                      old_classes=list(FER_CLASSES), where="ckpt")
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {key: tensor.shape for key, tensor in tensors.items()}


def test_peeking_a_checkpoint_gives_its_names_and_shapes_with_no_tensor_data(fer_checkpoint):
    loaded = load_checkpoint(fer_checkpoint)
    peeked = peek_checkpoint(str(fer_checkpoint))
    saved = peeked.state["modules"]["model"]
    assert _shapes(saved) == _shapes(loaded.state["modules"]["model"])
    assert all(tensor.is_meta for tensor in saved.values())
    assert (peeked.cfg.model_name, peeked.info) == (loaded.cfg.model_name, loaded.info)


def test_an_s3_checkpoint_is_peeked_in_place(fer_checkpoint, s3_server):
    uri = s3_server.new_bucket() + "/fer/checkpoint_epoch-0000"
    s3 = resolve(uri)
    copy_folder(resolve(fer_checkpoint).fs, str(fer_checkpoint), s3.fs, s3.path)
    saved = peek_checkpoint(uri).state["modules"]["model"]
    assert _shapes(saved) == _shapes(load_checkpoint(fer_checkpoint).state["modules"]["model"])


def test_the_plan_time_check_passes_a_fitting_checkpoint_with_every_network_on_meta(
        fer_checkpoint):
    built = []

    def build_modules(cfg, info):
        built.append(get_method("deep_emotion").build_modules(cfg, info))
        return built[-1]

    method = dataclasses.replace(get_method("deep_emotion"), build_modules=build_modules)
    cfg = method_config("deep_emotion", flags={"model.init": str(fer_checkpoint),
                                               "data.uri": "unused"})
    check_init(method, cfg, DataInfo(class_names=list(CK_CLASSES), image_size=48, channels=1))
    tensors = [t for modules in built for m in modules.values() for t in m.state_dict().values()]
    assert tensors and all(tensor.is_meta for tensor in tensors)


def test_the_plan_time_check_refuses_another_model_or_input_naming_what_differs(
        fer_checkpoint, tmp_path):
    def check(init: str, channels: int = 1) -> None:
        cfg = method_config("deep_emotion", flags={"model.init": init, "data.uri": "unused"})
        check_init(get_method("deep_emotion"), cfg,
                   DataInfo(class_names=list(FER_CLASSES), image_size=48, channels=channels))

    with pytest.raises(ConfigError, match=r"model\.init.*holds a vgg_bn model.*deep_emotion"):
        check(str(train_checkpoint(tmp_path / "vgg", "vgg_bn", steps=1)))
    with pytest.raises(ConfigError, match=r"model\.init.*does not fit.*of another shape: "):
        check(str(fer_checkpoint), channels=3)
    with pytest.raises(ConfigError, match=r"model\.init.*not a ray_fer checkpoint"):
        check(str(tmp_path))
