"""Method-level helpers of :mod:`ray_fer.train.steps`."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ray_fer.config import Config, ConfigError, build_config
from ray_fer.data.targets import derived_targets_note
from ray_fer.train import loop
from ray_fer.train.steps import DataInfo, Sums, make_optimizer, method_for, run_targets


def test_only_runs_that_train_on_derived_va_are_labelled_so():
    """A classifier on a set whose manifest also carries derived V/A (JAFFE, FER+) trains
    on its class labels: its reports must not say "derived V/A"."""
    derived = derived_targets_note()
    assert run_targets(method_for("caf"), derived) == "derived V/A"
    assert run_targets(method_for("face_ae"), derived) == "derived V/A"
    assert run_targets(method_for("deep_emotion"), derived) == ""
    assert run_targets(method_for("caf"), {"valence_arousal": "measured"}) == ""


def _optimizer(name: str, device: str) -> torch.optim.Optimizer:
    cfg = Config.from_dict({"method": "deep_emotion", "optim": {"optimizer": name}})
    return make_optimizer(cfg, nn.Linear(4, 2).to(device).parameters())


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_on_cpu_keep_torch_defaults(name):
    """Fused kernels are CUDA-only here: on CPU the optimizer must not ask for them."""
    assert not _optimizer(name, "cpu").defaults["fused"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_over_cuda_parameters_are_fused(name):
    opt = _optimizer(name, "cuda")
    assert opt.defaults["fused"] is True
    loss = sum(p.sum() for g in opt.param_groups for p in g["params"])
    loss.backward()
    opt.step()  # the fused kernel accepts these settings (nesterov SGD, decoupled decay)


def _step(batch: dict, smoothing: float = 0.0) -> Sums:
    cfg = build_config("deep_emotion", "classify", flags={
        "data.uri": "unused", "loss.label_smoothing": smoothing})
    info = DataInfo(class_names=[str(i) for i in range(7)], image_size=48, channels=1)
    method = method_for(cfg.method)
    state = loop.build_state(method, cfg, info, torch.device("cpu"), 1)
    state.train_modules = dict(state.modules)
    for module in state.modules.values():
        module.train()
    torch.manual_seed(0)  # the same dropout masks in the steps compared
    return method.train_batch(state, batch)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_mixed_batch_trains_and_scores_against_its_mix_target(smoothing):
    """With ``mix_target`` present, loss and training accuracy follow it, not ``label``:
    a batch whose mix targets are the one-hots of other labels gives the sums of a batch
    labelled with those (label smoothing applying alike)."""
    images = torch.rand(8, 1, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(8) % 7
    others = (labels + 3) % 7
    mixed = _step({"image": images, "label": labels,
                   "mix_target": torch.nn.functional.one_hot(others, 7).float()}, smoothing)
    relabelled = _step({"image": images, "label": others}, smoothing)
    plain = _step({"image": images, "label": labels}, smoothing)
    for key in ("loss_sum", "correct", "count"):
        torch.testing.assert_close(mixed[key], relabelled[key])
    assert not torch.equal(mixed["loss_sum"], plain["loss_sum"])


@pytest.mark.parametrize(("method", "family"), [
    ("caf", "caf"), ("caf_baseline", "caf"), ("face_ae", "face_ae")])
@pytest.mark.parametrize("key", ["mixup_alpha", "cutmix_alpha"])
def test_methods_without_class_targets_refuse_mixing_naming_the_key(method, family, key):
    cfg = build_config(method, family, flags={f"augment.{key}": 0.2})
    with pytest.raises(ConfigError, match=rf"augment\.{key}.*does not support Mixup/CutMix"):
        method_for(method).check_config(cfg)
    method_for(method).check_config(build_config(method, family))  # off: accepted


def test_set_flags_turn_mixing_on_and_refuse_it_with_ray_data_augmentation():
    cfg = build_config("vgg_bn", "classify",
                       sets=["augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"])
    assert cfg.augment.mixing and cfg.augment.cutmix_alpha == 1.0
    method_for("vgg_bn").check_config(cfg)
    with pytest.raises(ConfigError, match=r"augment.*mixup_alpha/cutmix_alpha.*where='worker'"):
        build_config("vgg_bn", "classify",
                     sets=["augment.mixup_alpha=0.2", "augment.where=data"])


BAD_MODEL_OPTIONS = [
    ("deep_emotion", "classify", "dropout=5", "dropout probability has to be between 0 and 1"),
    ("vgg_bn", "classify", "dropout=-0.5", "dropout probability has to be between 0 and 1"),
    ("deep_emotion", "classify", "hidden=0", "model.options.hidden' must be >= 1"),
    ("deep_emotion", "classify", "hidden=abc", "model.options.hidden': expects int"),
    ("resnet50_icbam", "classify", "cbam_reduction=0", "cbam_reduction' must be >= 1"),
    ("resnet50", "classify", "small_stem=maybe", "model.options.small_stem': expects bool"),
    ("resnet50", "classify", "pretrained=imagenet21k", "pretrained must be 'imagenet' or None"),
    ("caf", "caf", "encoder=vgg", "model.options.encoder': 'vgg' is not one of"),
    ("face_ae", "face_ae", "latent_dim=-4", "model.options.latent_dim' must be >= 1"),
]


@pytest.mark.parametrize(("method", "family", "option", "message"), BAD_MODEL_OPTIONS,
                         ids=[f"{m}-{o}" for m, _, o, _ in BAD_MODEL_OPTIONS])
def test_model_options_the_model_cannot_take_are_refused_before_ray(method, family, option,
                                                                    message):
    """Only the worker refused these, in a long Ray traceback."""
    cfg = build_config(method, family, sets=[f"model.options.{option}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        method_for(method).check_config(cfg)


def test_imagenet_weights_are_checked_by_name_without_a_download(monkeypatch):
    monkeypatch.setenv("TORCH_HOME", "/nonexistent/torch-home")
    cfg = build_config("resnet50", "classify", sets=["model.options.pretrained=imagenet"])
    method_for("resnet50").check_config(cfg)
