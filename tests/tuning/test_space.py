"""Search-space files are validated before any trial, with errors that name the key."""

from pathlib import Path

import pytest
import yaml

from ray_fer.config import override
from ray_fer.train.steps import method_for
from ray_fer.tune import base_config, parser
from ray_fer.tuning.space import SearchSpaceError, load_search_space

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def _write(tmp_path, doc: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load(tmp_path, doc: dict):
    return base_config(parser().parse_args(["deep_emotion", "--space",
                                            str(_write(tmp_path, doc))]))


GOOD = {"method": "deep_emotion", "fixed": {"train.epochs": 3},
        "search": {"loss.l2": {"loguniform": [1e-6, 1e-2]},
                   "train.batch_size": {"choice": [32, 64]}}}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_packaged_search_space_is_valid(path):
    method = method_for(yaml.safe_load(path.read_text())["method"])
    from ray_fer.config import build_config

    cfg = build_config(path.stem, method.family)
    space = load_search_space(path, lambda k, v: method.check_config(override(cfg, k, v)))
    assert space.method == path.stem and space.params


def test_good_space_applies_fixed_settings_and_builds_tune_domains(tmp_path):
    cfg, space = _load(tmp_path, GOOD)
    assert cfg.train.epochs == 3
    domains = space.param_space()
    assert set(domains) == {"loss.l2", "train.batch_size"}
    assert domains["loss.l2"].lower == 1e-6 and domains["loss.l2"].upper == 1e-2


@pytest.mark.parametrize(("doc", "named"), [
    ({**GOOD, "serach": {}}, "serach"),
    ({**GOOD, "search": {"loss.l3": {"uniform": [0, 1]}}}, "loss.l3"),
    ({**GOOD, "fixed": {"train.epoch": 3}}, "train.epoch"),
    ({**GOOD, "search": {"loss.l2": {"uniform": [0.5, 0.1]}}}, "loss.l2"),
    ({**GOOD, "search": {"loss.l2": {"loguniform": [0.0, 0.1]}}}, "loss.l2"),
    ({**GOOD, "search": {"optim.lr": {"normal": [0, 1]}}}, "optim.lr"),
    ({**GOOD, "search": {"train.batch_size": {"choice": ["big"]}}}, "train.batch_size"),
    ({**GOOD, "search_settings": {"num_sample": 3}}, "num_sample"),
    ({**GOOD, "start_with": [{"loss.l2": 0.5, "train.batch_size": 32}]}, "loss.l2: 0.5 is outside"),
    ({**GOOD, "start_with": [{"loss.l2": 1e-4}]}, "missing: train.batch_size"),
    ({**GOOD, "start_with": [{"loss.l2": 1e-4, "train.batch_size": 32, "optim.lr": 1e-3}]},
     "not searched: optim.lr"),
    ({**GOOD, "start_with": {"loss.l2": 1e-4}}, "start_with must be a list"),
])
def test_malformed_space_fails_naming_the_key(tmp_path, doc, named):
    with pytest.raises(SearchSpaceError, match=named.replace(".", r"\.")):
        _load(tmp_path, doc)


def test_start_points_are_kept_in_order(tmp_path):
    points = [{"loss.l2": 1e-4, "train.batch_size": 64}, {"loss.l2": 1e-3, "train.batch_size": 32}]
    _, space = _load(tmp_path, {**GOOD, "start_with": points})
    assert list(space.start_points) == points


LR_SPACES = [p for p in SPACES if "optim.lr" in yaml.safe_load(p.read_text())["search"]]


@pytest.mark.parametrize("path", LR_SPACES, ids=[p.stem for p in LR_SPACES])
def test_searched_learning_rates_bracket_the_packaged_one(path):
    """SGD recipes train at ~50x Adam's learning rate: a range made for Adam would search
    only under-trained models of an SGD method."""
    from ray_fer.config import build_config

    space = load_search_space(path, lambda k, v: None)
    cfg = build_config(space.method, method_for(space.method).family)
    (lr,) = (p for p in space.params if p.key == "optim.lr")
    assert lr.contains(cfg.optim.lr)


def test_packaged_deep_emotion_start_point_is_the_packaged_default_config():
    from ray_fer.config import build_config

    path = next(p for p in SPACES if p.stem == "deep_emotion")
    cfg = build_config("deep_emotion", "classify")
    space = load_search_space(path, lambda k, v: None)
    (point,) = space.start_points
    assert point["loss.l2"] == cfg.loss.l2 and point["optim.lr"] == cfg.optim.lr
    assert point["train.batch_size"] == cfg.train.batch_size


def test_space_for_another_method_is_refused(tmp_path):
    from ray_fer.config import ConfigError

    with pytest.raises(ConfigError, match="vgg_bn"):
        _load(tmp_path, {**GOOD, "method": "vgg_bn"})
