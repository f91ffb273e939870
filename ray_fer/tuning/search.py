"""One search: each searched method's base config and the space, and a trial's config.

A space may search several methods (``method: [vgg_bn, resnet18]``) as long as they
optimise the same validation metric; every trial starts from its method's base config
(packaged defaults < the space's fixed settings < ``--set`` < flags) and applies the
values Optuna proposed for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ray_fer.config import Config, ConfigError, override
from ray_fer.tuning.space import SearchSpace

#: The searched key that sets a trial's schedule length.
EPOCHS_KEY = "train.epochs"


@dataclass(frozen=True)
class Search:
    """The base config of every searched method and the validated space."""

    bases: dict[str, Config]
    space: SearchSpace
    metric: str
    mode: str
    #: Searched keys that ``--set`` or a flag fixed, with their values (see
    #: :meth:`SearchSpace.pinned`); ``space`` has them fixed already.
    pinned: dict = field(default_factory=dict)

    @property
    def first(self) -> Config:
        """The first method's base config: what all trials share (data, resources, runs)."""
        return self.bases[self.space.methods[0]]

    @property
    def max_epochs(self) -> int:
        """The longest schedule a trial may run (ASHA's ``max_t``)."""
        longest = 0
        for method, cfg in self.bases.items():
            ranges = [p for p in self.space.params if p.key == EPOCHS_KEY
                      and method in dict(p.when).get("method", (method,))]
            tops = [max(p.args) if p.dist == "choice" else p.args[1] - (p.dist == "randint")
                    for p in ranges]
            # The base schedule counts unless every trial of the method searches its own.
            always = any(set(dict(p.when)) <= {"method"} for p in ranges)
            longest = max([longest, *tops, *([] if always else [cfg.train.epochs])])
        return int(longest)

    def trial_config(self, values: dict[str, Any], *, storage: str, name: str) -> Config:
        """The run config of one trial: its method's base config with the proposed
        ``values`` (Optuna's names) applied, its run in ``<storage>/<name>``.

        The name is the Tune trial id, so a restored experiment finds each unfinished
        trial's run and continues it from its checkpoint.
        """
        cfg = self.bases[self.space.method_of(values)]
        for key, value in self.space.assignment(values).items():
            if key != "method":
                cfg = override(cfg, key, value)
        cfg = override(cfg, "run.storage", storage)
        return override(cfg, "run.name", name)

    def bases_yaml(self) -> str:
        """The base configs and the pinned keys as YAML (stored with an experiment for
        ``--resume``)."""
        return yaml.safe_dump({"methods": {m: cfg.to_dict() for m, cfg in self.bases.items()},
                               "pinned": self.pinned}, sort_keys=False)


def make_search(bases: dict[str, Config], space: SearchSpace,
                pinned: dict | None = None) -> Search:
    """A :class:`Search` of ``space`` with the keys of ``pinned`` fixed; the methods must
    share one validation metric and mode."""
    from ray_fer.methods.registry import get_method

    goals = {(get_method(m).metric, get_method(m).mode) for m in space.methods}
    if len(goals) != 1:
        raise ConfigError(f"{space.source}: methods {', '.join(space.methods)} optimise "
                          f"different metrics ({sorted(goals)}); search them separately")
    ((metric, mode),) = goals
    pinned = dict(pinned or {})
    return Search(bases=bases, space=space.pinned(pinned), metric=metric, mode=mode,
                  pinned=pinned)


def bases_from_yaml(text: str, where: str) -> tuple[dict[str, Config], dict]:
    """Base configs and pinned keys written by :meth:`Search.bases_yaml`."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("methods"), dict):
        raise ConfigError(f"{where}: expected each method's base config")
    return ({m: Config.from_dict(cfg) for m, cfg in raw["methods"].items()},
            dict(raw.get("pinned") or {}))
