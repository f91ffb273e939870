"""Search-space files are validated in full before any trial, with errors that name the
file and key; conditional keys are proposed only where their condition holds."""

from pathlib import Path

import optuna
import pytest
import yaml

from ray_fer.config import ConfigError
from ray_fer.methods.registry import method_config
from ray_fer.tune import PACKAGED_SPACES, base_configs, default_space_path, parser
from ray_fer.tuning.space import SearchSpaceError

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def _write(tmp_path, doc: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _load(tmp_path, doc: dict, name: str = "deep_emotion"):
    return base_configs(parser().parse_args([name, "--space", str(_write(tmp_path, doc))]))


GOOD = {"method": "deep_emotion", "fixed": {"train.epochs": 3},
        "search": {"loss.l2": {"loguniform": [1e-6, 1e-2]},
                   "train.batch_size": {"choice": [32, 64]}}}

CONDITIONAL = {
    "method": ["vgg_bn", "deep_emotion_wide"],
    "fixed": {"train.epochs": 3},
    "search": {
        "optim.optimizer": {"choice": ["sgd", "adam"]},
        "optim.lr": [{"loguniform": [1e-2, 2e-1], "when": {"optim.optimizer": "sgd"}},
                     {"loguniform": [1e-4, 3e-3], "when": {"optim.optimizer": "adam"}}],
        "optim.momentum": {"uniform": [0.8, 0.95], "when": {"optim.optimizer": "sgd"}},
        "model.options.width": {"choice": [32, 64], "when": {"method": "deep_emotion_wide"}},
        "loss.l2": {"uniform": [0.0, 1e-3]},
    },
}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_packaged_search_space_is_valid(path):
    search = base_configs(parser().parse_args([path.stem]))
    assert search.space.params
    assert set(search.bases) == set(search.space.methods)


def test_good_space_applies_fixed_settings_to_the_base_config(tmp_path):
    search = _load(tmp_path, GOOD)
    assert search.first.train.epochs == 3
    assert search.space.keys == ["loss.l2", "train.batch_size"]
    assert search.metric == "val_accuracy" and search.max_epochs == 3


@pytest.mark.parametrize(("doc", "named"), [
    ({**GOOD, "serach": {}}, "serach"),
    ({**GOOD, "search": {"loss.l3": {"uniform": [0, 1]}}}, "search.loss.l3"),
    ({**GOOD, "fixed": {"train.epoch": 3}}, "fixed.train.epoch"),
    ({**GOOD, "search": {"loss.l2": {"uniform": [0.5, 0.1]}}}, "search.loss.l2"),
    ({**GOOD, "search": {"loss.l2": {"loguniform": [0.0, 0.1]}}}, "search.loss.l2"),
    ({**GOOD, "search": {"optim.lr": {"normal": [0, 1]}}}, "search.optim.lr"),
    ({**GOOD, "search": {"train.batch_size": {"choice": ["big"]}}}, "search.train.batch_size"),
    ({**GOOD, "search_settings": {"num_sample": 3}}, "num_sample"),
    ({**GOOD, "start_with": [{"loss.l2": 0.5, "train.batch_size": 32}]},
     "start_with[0].loss.l2: 0.5 is outside"),
    ({**GOOD, "start_with": [{"loss.l2": 1e-4}]}, "missing: train.batch_size"),
    ({**GOOD, "start_with": [{"loss.l2": 1e-4, "train.batch_size": 32, "optim.lr": 1e-3}]},
     "not searched: optim.lr"),
    ({**GOOD, "start_with": {"loss.l2": 1e-4}}, "start_with must be a list"),
])
def test_malformed_space_fails_naming_the_key(tmp_path, doc, named):
    with pytest.raises(SearchSpaceError, match=named.replace(".", r"\.").replace("[", r"\[")):
        _load(tmp_path, doc)


@pytest.mark.parametrize(("key", "spec", "says"), [
    # Every value of a choice, not just the first.
    ("train.batch_size", {"choice": [32, "abc", -5]}, "value 'abc'"),
    ("train.batch_size", {"choice": [32, 64, -5]}, "value -5 .*must be >= 1"),
    # Both bounds of a range, not just the lower one.
    ("optim.warmup", {"uniform": [0.1, 5.0]}, "value 5.0 .*must be in \\[0, 1\\)"),
    # A float range on an integer key proposes fractions the key refuses.
    ("train.batch_size", {"uniform": [16, 128]}, "expects int"),
    ("optim.lr", {"loguniform": [1e-4, float("inf")]}, "must be finite"),
    ("optim.lr", {"uniform": [float("nan"), 1.0]}, "must be finite"),
])
def test_every_value_and_both_bounds_are_checked_before_any_trial(tmp_path, key, spec, says):
    with pytest.raises(SearchSpaceError, match=f"space.yaml: search.{key}.*{says}"):
        _load(tmp_path, {**GOOD, "search": {key: spec}})


def test_start_points_are_kept_in_order(tmp_path):
    points = [{"loss.l2": 1e-4, "train.batch_size": 64}, {"loss.l2": 1e-3, "train.batch_size": 32}]
    search = _load(tmp_path, {**GOOD, "start_with": points})
    assert list(search.space.start_points) == points


def test_a_space_searches_several_methods_with_conditional_keys(tmp_path):
    search = _load(tmp_path, CONDITIONAL, name="vgg_bn")
    space = search.space
    assert space.methods == ("vgg_bn", "deep_emotion_wide")
    assert space.keys == ["method", "optim.optimizer", "optim.lr", "optim.momentum",
                          "model.options.width", "loss.l2"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                direction="maximize")
    for _ in range(40):
        trial = study.ask()
        space(trial)
        values = space.assignment(trial.params)
        sgd = values["optim.optimizer"] == "sgd"
        assert ("optim.momentum" in values) == sgd
        assert 1e-2 <= values["optim.lr"] <= 2e-1 if sgd else 1e-4 <= values["optim.lr"] <= 3e-3
        assert ("model.options.width" in values) == (values["method"] == "deep_emotion_wide")
        cfg = search.trial_config(trial.params, storage="runs", name="t")
        assert cfg.method == values["method"] and cfg.optim.lr == values["optim.lr"]
        study.tell(trial, 0.5)


def test_packaged_start_points_are_each_methods_recipe(tmp_path):
    vgg, wide = _load(tmp_path, {**CONDITIONAL, "start_with": ["packaged"]},
                      name="vgg_bn").space.start_points
    recipe = method_config("vgg_bn")
    assert vgg == {"method": "vgg_bn", "optim.optimizer": "sgd",
                   "optim.lr|optim.optimizer=sgd": recipe.optim.lr,
                   "optim.momentum": recipe.optim.momentum, "loss.l2": recipe.loss.l2}
    recipe = method_config("deep_emotion_wide")
    assert wide == {"method": "deep_emotion_wide", "optim.optimizer": "adam",
                    "optim.lr|optim.optimizer=adam": recipe.optim.lr,
                    "model.options.width": 64, "loss.l2": recipe.loss.l2}


def test_packaged_start_point_outside_the_space_names_the_method(tmp_path):
    doc = {**CONDITIONAL, "method": ["deep_emotion_wide"], "start_with": ["packaged"]}
    doc["search"] = {**doc["search"], "optim.optimizer": {"choice": ["sgd", "adamw"]},
                     "optim.lr": {"loguniform": [1e-4, 2e-1]}}
    del doc["search"]["model.options.width"]
    with pytest.raises(SearchSpaceError, match=r"deep_emotion_wide, packaged\)\.optim"
                                               r"\.optimizer: 'adam' is outside"):
        _load(tmp_path, doc, name="deep_emotion_wide")


@pytest.mark.parametrize(("search", "says"), [
    ({"optim.momentum": {"uniform": [0.8, 0.9], "when": {"optim.optimizer": "sgd"}}},
     "must be an unconditional choice key searched above"),
    ({"optim.optimizer": {"choice": ["sgd"]},
      "optim.momentum": {"uniform": [0.8, 0.9], "when": {"optim.optimizer": "adam"}}},
     "never takes 'adam'"),
    ({"optim.optimizer": {"choice": ["sgd", "adam"]},
      "optim.lr": [{"loguniform": [1e-2, 1e-1], "when": {"optim.optimizer": "sgd"}},
                   {"loguniform": [1e-4, 1e-3], "when": {"optim.optimizer": ["sgd", "adam"]}}]},
     "exclude each other"),
])
def test_bad_conditions_are_refused(tmp_path, search, says):
    with pytest.raises(SearchSpaceError, match=says):
        _load(tmp_path, {"method": "deep_emotion", "search": search})


def test_methods_with_different_metrics_cannot_share_a_search(tmp_path):
    doc = {"method": ["deep_emotion", "caf"], "search": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}
    with pytest.raises(ConfigError, match="different metrics"):
        _load(tmp_path, doc)


LR_SPACES = [p for p in SPACES if "optim.lr" in yaml.safe_load(p.read_text())["search"]]


@pytest.mark.parametrize("path", LR_SPACES, ids=[p.stem for p in LR_SPACES])
def test_searched_learning_rates_bracket_the_packaged_one(path):
    """SGD recipes train at ~50x Adam's learning rate: a range made for Adam would search
    only under-trained models of an SGD method."""
    space = base_configs(parser().parse_args([path.stem])).space
    for method in space.methods:
        cfg = method_config(method)
        ranges = [p for p in space.params if p.key == "optim.lr"
                  and dict(p.when).get("optim.optimizer", (cfg.optim.optimizer,))
                  .__contains__(cfg.optim.optimizer)]
        assert any(p.contains(cfg.optim.lr) for p in ranges), (method, cfg.optim.lr)


def test_packaged_deep_emotion_start_point_is_the_packaged_default_config():
    cfg = method_config("deep_emotion")
    (point,) = base_configs(parser().parse_args(["deep_emotion"])).space.start_points
    assert point["loss.l2"] == cfg.loss.l2 and point["train.batch_size"] == cfg.train.batch_size
    assert point["optim.lr|optim.optimizer=adam/adamw"] == cfg.optim.lr
    assert point["optim.optimizer"] == cfg.optim.optimizer == "adam"


def test_space_for_another_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="searches vgg_bn, not 'deep_emotion'"):
        _load(tmp_path, {**GOOD, "method": "vgg_bn"})


def test_flags_and_set_fix_a_searched_key_for_every_trial(tmp_path):
    """--epochs and --set win over the file: the key is no longer searched, and conditions
    on it are decided once (here: SGD's ranges stay, unconditional; AdamW's go)."""
    path = _write(tmp_path, {**CONDITIONAL, "fixed": {}, "search": {
        **CONDITIONAL["search"], "train.epochs": {"choice": [5, 60]}}, "start_with": ["packaged"]})
    search = base_configs(parser().parse_args(["vgg_bn", "--space", str(path), "--epochs", "2",
                                               "--set", "optim.optimizer=sgd"]))
    space = search.space
    assert "train.epochs" not in space.keys and "optim.optimizer" not in space.keys
    (lr,) = (p for p in space.params if p.key == "optim.lr")
    assert lr.when == () and lr.args == (1e-2, 2e-1)
    assert search.max_epochs == 2 and search.first.optim.optimizer == "sgd"
    vgg = space.start_points[0]
    assert "optim.optimizer" not in vgg and vgg["optim.lr|optim.optimizer=sgd"] == 0.05


def test_spaces_are_found_in_the_working_directory_first_then_in_the_package(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_space_path("caf") == PACKAGED_SPACES / "caf.yaml"
    assert (PACKAGED_SPACES / "caf.yaml").read_text() == next(
        p for p in SPACES if p.stem == "caf").read_text()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "caf.yaml").write_text("method: caf\n")
    assert default_space_path("caf") == tmp_path / "search_spaces" / "caf.yaml"
    with pytest.raises(ConfigError, match="no search space 'nope'"):
        default_space_path("nope")
