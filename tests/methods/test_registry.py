"""The registry, and every model and method in it: a model or method is tested here by
being registered (the parametrisations read the registry, as timm's tests read
``list_models()``).

Models: every classifier runs forward and backward at its input; options, defaults and
errors come from the factories. Methods: every packaged config passes the method's own
checks, every method trains a step and validates on synthetic faces, reporting the metric
it declares, and what it declares (Mixup/CutMix, worker limit, targets, outputs) holds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from ray_fer.config import ConfigError
from ray_fer.data.augment import normalise
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import ROW_ID_STRIDE, decode_images, read_manifest
from ray_fer.data.targets import derived_targets_note
from ray_fer.ingest import ingest
from ray_fer.methods.registry import (
    METHODS,
    MODELS,
    Model,
    build_model,
    get_method,
    get_model,
    input_shape,
    method_config,
    method_names,
    model_names,
    model_options,
    register_model,
)
from ray_fer.models.layers.inputs import fit_images
from ray_fer.storage import resolve
from ray_fer.train import epoch

#: The papers' classifiers and the others ray_fer ships; all must stay registered.
CLASSIFIERS = (
    "deep_emotion",
    "deep_emotion_wide",
    "vgg_bn",
    "resnet18",
    "mobilenet_v2_dense",
    "efficientnet_b0_dense",
    "efficientnet_b2_dense",
    "resnet50",
    "resnet101",
    "resnet50_icbam",
    "resnet101_icbam",
)
VA_METHODS = ("caf", "caf_baseline", "face_ae", "face_ae_regressor")
# The backbones at reduced sizes keep CPU tests fast; everything else at its default size.
REDUCED = {
    "mobilenet_v2_dense": {"image_size": 32},
    "efficientnet_b0_dense": {"image_size": 32},
    "efficientnet_b2_dense": {"image_size": 32},
    "resnet50": {"image_size": 32, "small_stem": False},
    "resnet101": {"image_size": 32, "small_stem": False},
    "resnet50_icbam": {"image_size": 32, "small_stem": False},
    "resnet101_icbam": {"image_size": 32, "small_stem": False},
    # Two members of other families and input sizes: the ensemble converts its input.
    "ensemble": {"members": [{"model": "deep_emotion"},
                             {"model": "vgg_bn", "image_size": 32, "channels": 3}],
                 "weights": [3, 1]},
}
# One model per architecture: the layout code paths are shared within one.
CHANNELS_LAST = ("deep_emotion", "vgg_bn", "mobilenet_v2_dense", "resnet50_icbam")
#: The largest input a method trains on in these tests (the 224 px models at 32 px).
TEST_SIZE = 64


def _test_build(name: str, channels: int, num_classes: int = 5) -> tuple[nn.Module, int]:
    options = dict(REDUCED.get(name, {}))
    size = options.pop("image_size", get_model(name).image_size)
    model = build_model(
        name, num_classes=num_classes, in_channels=channels, image_size=size, **options
    )
    return model, size


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", model_names("classify"))
def test_every_classifier_runs_forward_and_backward(name, channels):
    torch.manual_seed(0)
    model, size = _test_build(name, channels)
    x = torch.rand(2, channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 5)
    nn.functional.cross_entropy(logits, torch.tensor([0, 4])).backward()
    assert x.grad.abs().sum() > 0, "no gradient reaches the input, hence the first layer"
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name", CHANNELS_LAST)
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    model, size = _test_build(name, 3)
    model.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_classifiers_are_registered_with_their_defaults():
    assert set(CLASSIFIERS) | {"ensemble"} <= set(model_names("classify"))
    assert set(VA_METHODS) <= set(model_names("va")) and set(VA_METHODS) <= set(method_names())
    assert model_names() == tuple(sorted(MODELS))
    assert all(get_model(name).task == "va" for name in model_names("va"))
    assert get_model("deep_emotion").image_size == 48
    assert get_model("deep_emotion").channels == 1
    assert get_model("resnet50_icbam").image_size == 224


def test_none_sizes_take_the_model_defaults():
    model = build_model("vgg_bn", num_classes=7)
    assert model.features[0].in_channels == get_model("vgg_bn").channels
    assert model.classifier[1].in_features == 512 * 3 * 3  # 48 px after four 2x poolings


@pytest.mark.parametrize("name", model_names())
def test_every_registered_factory_resolves(name):
    assert isinstance(model_options(name), dict)


def test_options_are_listed_with_defaults():
    assert model_options("deep_emotion_wide") == {"width": 64, "hidden": 256, "dropout": 0.5}
    assert "cbam_reduction" in model_options("resnet50_icbam")
    assert "cbam_reduction" not in model_options("resnet50")


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown model 'deep_emotions'.*deep_emotion_wide"):
        build_model("deep_emotions", num_classes=7)
    with pytest.raises(ValueError, match="resnet50_icbam"):
        get_model("resnet")
    with pytest.raises(ConfigError, match="unknown method 'resnet'.*resnet50_icbam"):
        get_method("resnet")


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="unknown option.*stem_stride.*accepts: hidden, dropout"):
        build_model("deep_emotion", num_classes=7, stem_stride=1)


@pytest.mark.parametrize(
    "arguments",
    [
        {"num_classes": 0},
        {"num_classes": 7, "in_channels": 2},
        {"num_classes": 7, "image_size": 0},
    ],
)
def test_invalid_sizes_are_rejected(arguments):
    with pytest.raises(ValueError):
        build_model("deep_emotion", **arguments)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        model_names("regress")
    with pytest.raises(ValueError, match="unknown task"):
        method_names("regress")


def test_registry_is_immutable_and_a_name_registers_once():
    with pytest.raises(TypeError):
        MODELS["mine"] = MODELS["vgg_bn"]
    with pytest.raises(TypeError):
        METHODS["mine"] = METHODS["vgg_bn"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_model("vgg_bn").image_size = 96
    with pytest.raises(ValueError, match="registered twice"):
        register_model(Model("vgg_bn", get_model("vgg_bn").build, 48, 1, "classify"))


# -------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", method_names())
def test_every_method_accepts_its_packaged_config(name):
    """Recipes set model options (the EfficientNets' head dropout); a misspelt one would
    fail every default run of that method. The check is the one every run makes."""
    method = get_method(name)
    cfg = method_config(name)
    method.check_config(cfg)
    assert cfg.method == name and get_model(cfg.model_name).task == method.task


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    """8 synthetic people x 8 faces at 32 px RGB with V/A, split by person."""
    folder = tmp_path_factory.mktemp("faces")
    ingest("synthetic", folder, str(folder / "shards"), size=32, channels=3, folds=2,
           progress=False, reader_options={"subjects": 8, "images_per_subject": 8, "size": 32})
    return str(folder / "shards")


def _batch(uri: str, split: str, info: DataInfo, rows: int = 16) -> dict[str, torch.Tensor]:
    """The first ``rows`` faces of ``split`` as the stream hands them to a step."""
    loc = resolve(uri)
    manifest = read_manifest(loc)
    columns = ["image", "label", "valence", "arousal"]
    parts, ids = [], []
    for index, shard in enumerate(manifest.shards):
        table = pq.read_table(Path(loc.path, shard.file), columns=[*columns, "split"])
        keep = np.flatnonzero(table["split"].to_numpy(zero_copy_only=False) == split)
        parts.append(table.take(keep))
        ids.append(index * ROW_ID_STRIDE + keep)
    table = pa.concat_tables(parts).slice(0, rows)
    images = normalise(torch.from_numpy(decode_images(table["image"], manifest.image_shape)))
    return {"image": fit_images(images, info.image_size, info.channels),
            "label": torch.from_numpy(table["label"].to_numpy().astype(np.int64)),
            "valence": torch.tensor(table["valence"].to_numpy()),
            "arousal": torch.tensor(table["arousal"].to_numpy()),
            "row": torch.from_numpy(np.concatenate(ids)[:rows])}


@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_a_step_and_validates_on_its_metric(name, faces):
    method = get_method(name)
    model = get_model(method_config(name).model_name)
    size = model.image_size if model.image_size <= TEST_SIZE else 32
    cfg = method_config(name, flags={"data.uri": faces, "data.image_size": size})
    classes = list(read_manifest(resolve(faces)).class_names)
    info = DataInfo(classes, *input_shape(cfg))
    torch.manual_seed(0)
    state = epoch.build_state(method, cfg, info, torch.device("cpu"), 1)
    state.train_modules = dict(state.modules)
    for module in state.modules.values():
        module.train()
    train_sums = method.train_batch(state, _batch(faces, "train", info))
    assert float(train_sums["count"]) > 0
    assert all(torch.isfinite(v).all() for v in train_sums.values())
    for module in state.modules.values():
        module.eval()
    with torch.no_grad():
        val_sums = method.eval_batch(state, _batch(faces, "val", info))
    metrics = method.summarize(val_sums, "val", info)
    assert method.metric in metrics and math.isfinite(metrics[method.metric]), metrics
    if method.figures is not None:
        assert all(png[:4] == b"\x89PNG" for png in method.figures(val_sums, info).values())


@pytest.mark.parametrize("name", method_names("va"))
@pytest.mark.parametrize("key", ["mixup_alpha", "cutmix_alpha"])
def test_methods_without_class_targets_refuse_mixing_naming_the_key(name, key):
    cfg = method_config(name, flags={f"augment.{key}": 0.2})
    with pytest.raises(ConfigError, match=rf"augment\.{key}.*does not support Mixup/CutMix"):
        get_method(name).check_config(cfg)
    get_method(name).check_config(method_config(name))  # off: accepted


@pytest.mark.parametrize("name", method_names("classify"))
def test_classifiers_accept_mixing(name):
    cfg = method_config(name, sets=["augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"])
    assert cfg.augment.mixing
    get_method(name).check_config(cfg)


def test_mixing_needs_worker_augmentation():
    with pytest.raises(ConfigError, match=r"augment.*mixup_alpha/cutmix_alpha.*where='worker'"):
        method_config("vgg_bn", sets=["augment.mixup_alpha=0.2", "augment.where=data"])


@pytest.mark.parametrize("name", [m for m in method_names() if get_method(m).max_workers])
def test_a_worker_limit_is_checked_before_any_work(name):
    limit = get_method(name).max_workers
    get_method(name).check_config(method_config(name, flags={"resources.workers": limit}))
    with pytest.raises(ConfigError, match=r"resources\.workers.*per run"):
        get_method(name).check_config(
            method_config(name, flags={"resources.workers": limit + 1}))


def test_only_runs_that_train_on_derived_va_are_labelled_so():
    """A classifier on a set whose manifest also carries derived V/A (JAFFE, FER+) trains
    on its class labels: its reports must not say "derived V/A"."""
    derived = derived_targets_note()
    for name in method_names():
        expected = "derived V/A" if get_method(name).task == "va" else ""
        assert get_method(name).targets_note(derived) == expected, name
    assert get_method("caf").targets_note({"valence_arousal": "measured"}) == ""


@pytest.mark.parametrize("name", method_names())
def test_outputs_follow_the_task(name):
    outputs = get_method(name).outputs(["a", "b", "c"])
    assert outputs == (["a", "b", "c"] if get_method(name).task == "classify"
                       else ["valence", "arousal"])


def test_methods_without_options_refuse_them_naming_the_key():
    with pytest.raises(ConfigError, match=r"options\.margin.*takes no method options"):
        get_method("vgg_bn").check_config(method_config("vgg_bn", sets=["options.margin=1"]))


BAD_MODEL_OPTIONS = [
    ("deep_emotion", "dropout=5", "dropout probability has to be between 0 and 1"),
    ("vgg_bn", "dropout=-0.5", "dropout probability has to be between 0 and 1"),
    ("deep_emotion", "hidden=0", "model.options.hidden' must be >= 1"),
    ("deep_emotion", "hidden=abc", "model.options.hidden': expects int"),
    ("resnet50_icbam", "cbam_reduction=0", "cbam_reduction' must be >= 1"),
    ("resnet50", "small_stem=maybe", "model.options.small_stem': expects bool"),
    ("resnet50", "pretrained=imagenet21k", "pretrained must be 'imagenet' or None"),
    ("caf", "encoder=vgg", "model.options.encoder': 'vgg' is not one of"),
    ("face_ae", "latent_dim=-4", "model.options.latent_dim' must be >= 1"),
]


@pytest.mark.parametrize(("method", "option", "message"), BAD_MODEL_OPTIONS,
                         ids=[f"{m}-{o}" for m, o, _ in BAD_MODEL_OPTIONS])
def test_model_options_the_model_cannot_take_are_refused_before_ray(method, option, message):
    """Only the worker refused these, in a long Ray traceback."""
    cfg = method_config(method, sets=[f"model.options.{option}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_method(method).check_config(cfg)


def test_imagenet_weights_are_checked_by_name_without_a_download(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", "/nonexistent/torch-home")
    cfg = method_config("resnet50", sets=["model.options.pretrained=imagenet"])
    get_method("resnet50").check_config(cfg)

