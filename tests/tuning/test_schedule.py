"""ASHA compares trials of different schedule lengths at equal shares of their schedules."""

import pytest
import yaml

from ray_fer.config import ConfigError
from ray_fer.tune import asha_settings, base_configs, parser, settings

OPTS = {"grace_period": 10, "reduction_factor": 3}


def _search(tmp_path, epochs):
    doc = {"method": "vgg_bn", "search": {"train.epochs": epochs,
                                          "loss.l2": {"uniform": [0.0, 1e-4]}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return base_configs(parser().parse_args(["vgg_bn", "--space", str(path)]))


def test_rungs_are_shares_of_the_longest_searched_schedule(tmp_path):
    settings = asha_settings(_search(tmp_path, {"choice": [40, 80]}), OPTS)
    assert settings["time_attr"] == "schedule_pct" and settings["max_t"] == 100.0
    # 10 epochs of 80: a 40-epoch trial meets the rung after 5 of its epochs.
    assert settings["grace_period"] == pytest.approx(12.5)
    assert settings["metric"] == "val_accuracy" and settings["mode"] == "max"


def test_a_grace_period_beyond_every_schedule_is_refused(tmp_path):
    search = _search(tmp_path, {"choice": [4, 8]})
    args = parser().parse_args(["vgg_bn", "--grace-period", "10"])
    with pytest.raises(ConfigError, match="longer than the longest schedule \\(8 epochs"):
        settings(args, search.space, search.max_epochs)
