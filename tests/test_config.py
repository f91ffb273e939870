"""Run configs: precedence of the sources, type conversion, errors that name the key,
a lossless YAML round trip, and the train CLI refusing a bad key before Ray starts."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing

import pytest
import yaml

from ray_fer.config import Config, ConfigError, check_name, override
from ray_fer.methods.registry import get_method, method_config


def test_sources_apply_in_precedence_order(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim: {lr: 0.5, schedule: cosine}\ntrain: {epochs: 7}\n")
    cfg = method_config("deep_emotion", files=[yaml.safe_load(path.read_text())],
                        sets=["optim.lr=0.25", "train.epochs=9"], flags={"train.epochs": 11,
                                                                          "loss.l2": None})
    assert cfg.optim.schedule == "cosine"  # file over packaged defaults
    assert cfg.optim.lr == 0.25  # --set over file
    assert cfg.train.epochs == 11  # flag over --set
    assert cfg.loss.l2 == get_method("deep_emotion").defaults["loss"]["l2"]


def test_method_overrides_sit_on_the_classifier_defaults():
    resnet = method_config("resnet50_icbam")
    emotion = method_config("deep_emotion")
    assert resnet.optim.optimizer == "sgd" and resnet.loss.label_smoothing == 0.1
    assert emotion.optim.optimizer == "adam" and emotion.loss.l2 > 0
    assert resnet.data.val_split == emotion.data.val_split == "val"


def test_strings_are_converted_to_the_field_types():
    cfg = Config(method="deep_emotion")
    cfg = override(cfg, "optim.lr", "1e-3")
    cfg = override(cfg, "augment.enabled", "off")
    cfg = override(cfg, "augment.scale", "0.8,1.2")
    cfg = override(cfg, "data.train_splits", "train,extra")
    cfg = override(cfg, "data.fold", "none")
    cfg = override(cfg, "model.options.dropout", "0.3")
    assert cfg.optim.lr == 1e-3
    assert cfg.augment.enabled is False and cfg.augment.scale == (0.8, 1.2)
    assert cfg.data.train_splits == ["train", "extra"] and cfg.data.fold is None
    assert cfg.model.options == {"dropout": 0.3}


@pytest.mark.parametrize(("key", "value", "named"), [
    ("optim.lrr", "1", "optim.lrr"),
    ("trian.epochs", "1", "trian"),
    ("optim.lr", "fast", "optim.lr"),
    ("train.epochs", "2.5", "train.epochs"),
    ("optim.optimizer", "rmsprop", "optim.optimizer"),
    ("augment.colour", "1", "augment.colour"),
    ("augment.where", "gpu", "augment"),
    ("resources.gpu", "maybe", "resources.gpu"),
])
def test_bad_values_raise_errors_naming_the_key(key, value, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        method_config("deep_emotion", sets=[f"{key}={value}"])


@pytest.mark.parametrize(("key", "value"), [
    ("train.epochs", "0"), ("loss.label_smoothing", "1.0"), ("data.channels", "2"),
    ("optim.warmup", "1.5"), ("run.name", "a/b"), ("resources.placement", "SCATTER"),
    ("resources.custom.node_b", "0"), ("resources.custom.GPU", "1"),
    ("resources.custom.node_b", "lots")])
def test_out_of_range_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        method_config("deep_emotion", sets=[f"{key}={value}"])


def _float_keys(section, prefix: str = "") -> list[str]:
    """Every dotted key of ``section`` whose type holds floats (also in tuples)."""
    keys = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys += _float_keys(value, f"{prefix}{f.name}.")
        else:
            tp = typing.get_type_hints(type(section))[f.name]
            if typing.get_origin(tp) is not dict and float in (tp, *typing.get_args(tp)):
                keys.append(f"{prefix}{f.name}")
    return keys


FLOAT_KEYS = _float_keys(Config(method="deep_emotion"))


def test_the_float_keys_are_found():
    assert {"optim.lr", "loss.l2", "optim.warmup", "augment.scale",
            "resources.gpus_per_worker"} <= set(FLOAT_KEYS), FLOAT_KEYS


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", float("inf"), float("nan")])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_non_finite_values(key, value):
    """``--lr inf`` trained to NaN and reported a best checkpoint."""
    if key in ("augment.scale", "augment.erasing_area"):  # pairs
        value = f"{value},1.0"
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}.*finite"):
        method_config("deep_emotion", sets=[f"{key}={value}"])


@pytest.mark.parametrize("key", ["model.options.dropout", "resources.custom.node_b",
                                 "options.margin"])
@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_mappings_refuse_non_finite_values_too(key, value):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}' must be a finite number"):
        method_config("deep_emotion", sets=[f"{key}={value}"])


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b", "/abs", "../up"])
def test_a_run_name_must_be_one_plain_folder_name(name):
    with pytest.raises(ConfigError, match="run.name' must be one plain folder name"):
        method_config("deep_emotion", sets=[f"run.name={name}"])
    with pytest.raises(ConfigError, match="--name .* must be one plain folder name"):
        check_name(name)


@pytest.mark.parametrize("name", ["de-l2", "run.1", "..x", "a b"])
def test_plain_names_pass(name):
    check_name(name)
    assert method_config("deep_emotion", sets=[f"run.name={name}"]).run.name == name


@pytest.mark.parametrize(("key", "value"), [
    ("optim.beta1", "7"), ("optim.beta1", "-0.1"), ("optim.beta2", "1"),
    ("optim.momentum", "-0.5"), ("optim.momentum", "1.5"), ("optim.gamma", "0")])
def test_optimizer_settings_out_of_range_name_the_key(key, value):
    """torch refused these only inside the worker, after Ray had started."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        method_config("deep_emotion", sets=[f"{key}={value}"])


def test_placement_and_custom_resources_are_set_per_worker():
    cfg = method_config("deep_emotion",
                        sets=["resources.placement=STRICT_SPREAD", "resources.custom.node_b=1",
                              "resources.custom.ssd=0.5"])
    assert cfg.resources.placement == "STRICT_SPREAD"
    assert cfg.resources.custom == {"node_b": 1, "ssd": 0.5}


def test_config_round_trips_through_yaml():
    cfg = method_config("resnet50", sets=["augment.scale=0.7,1.3", "data.fold=2",
                                          "model.options.dropout=0.2",
                                          "resources.custom.node_a=1"])
    again = Config.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_config_holds_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    cfg = method_config("deep_emotion", flags={"data.uri": "s3://bucket/fer",
                                               "data.endpoint": "http://s3:8333"})
    text = cfg.to_yaml()
    assert "s3cr3t-value" not in text and "AKIAEXAMPLE" not in text


def test_train_cli_rejects_unknown_key_before_ray_starts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ray_fer.train", "deep_emotion", "--set", "optim.lrr=1",
         "--storage", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'optim.lrr'" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_train_cli_rejects_unknown_model_option(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ray_fer.train", "deep_emotion", "--set",
         "model.options.colour=red", "--storage", str(tmp_path), "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model.options.colour" in proc.stderr


def test_resume_starts_from_the_stored_config_plus_new_flags(tmp_path):
    from ray_fer.train.__main__ import config_from_args, parser

    stored = method_config("deep_emotion", flags={
        "optim.lr": 0.123, "run.name": "old", "run.storage": str(tmp_path)})
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(stored.to_yaml())
    args = parser().parse_args(["deep_emotion", "--resume", "--name", "old", "--storage",
                                str(tmp_path), "--epochs", "99"])
    cfg = config_from_args(args)
    assert cfg.optim.lr == 0.123 and cfg.train.epochs == 99 and cfg.run.resume
    with pytest.raises(ConfigError, match="no run"):
        config_from_args(parser().parse_args(["deep_emotion", "--resume", "--name", "new",
                                              "--storage", str(tmp_path)]))
