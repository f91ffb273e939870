"""Search spaces: ``search_spaces/<method>.yaml`` → validated :class:`SearchSpace` → Tune domains.

A search-space file is meant to be read and edited by a person::

    method: deep_emotion
    fixed:                     # run settings, not searched (dotted config keys)
      train.epochs: 30
    search:                    # dotted config key → distribution
      loss.l2:     {loguniform: [1.0e-6, 1.0e-2]}
      optim.lr:    {loguniform: [1.0e-4, 3.0e-3]}
      model.options.dropout: {uniform: [0.0, 0.5]}
      train.batch_size: {choice: [64, 128, 256]}
    search_settings:           # optional; CLI flags win
      num_samples: 16
      max_concurrent: 4
    start_with:                # optional: points tried first, e.g. the packaged defaults
      - {loss.l2: 1.0e-4, optim.lr: 1.0e-3, model.options.dropout: 0.5, train.batch_size: 128}

Every key (in ``fixed`` and ``search``) is checked against the run configuration before
any trial starts, and bad bounds are refused, each error naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ray_fer.config import ConfigError

#: Distribution name → number of bounds (None = a list of values).
DISTRIBUTIONS = {
    "uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "qloguniform": 3, "choice": None,
}
TOP_LEVEL = {"method", "fixed", "search", "search_settings", "start_with", "description"}
SETTINGS = {"num_samples", "max_concurrent", "grace_period", "reduction_factor",
            "time_budget_s", "metric", "mode"}


class SearchSpaceError(ConfigError):
    """A search-space file is malformed; the message names the file and key."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: config key, distribution and its arguments."""

    key: str
    dist: str
    args: tuple

    def domain(self):
        """The Ray Tune domain (``tune.loguniform(...)`` etc.)."""
        from ray import tune

        if self.dist == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.dist)(*self.args)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies inside this parameter's bounds or values."""
        if self.dist == "choice":
            return value in self.args
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        low, high = self.args[0], self.args[1]
        return low <= value <= high


@dataclass(frozen=True)
class SearchSpace:
    method: str
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: Points (one value per searched key) that Optuna evaluates before sampling.
    start_points: tuple[dict[str, Any], ...] = ()

    def param_space(self) -> dict[str, Any]:
        """Flat ``{dotted key: Tune domain}`` mapping for ``Tuner(param_space=...)``."""
        return {p.key: p.domain() for p in self.params}


def _check_param(where: str, key: str, spec: Any) -> Param:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise SearchSpaceError(
            f"{where}: search.{key} must be one mapping like {{loguniform: [1e-5, 1e-2]}}, "
            f"got {spec!r}"
        )
    (dist, args), = spec.items()
    if dist not in DISTRIBUTIONS:
        raise SearchSpaceError(
            f"{where}: search.{key}: unknown distribution {dist!r}; use one of "
            f"{', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or not args:
        raise SearchSpaceError(f"{where}: search.{key}.{dist} needs a list, got {args!r}")
    arity = DISTRIBUTIONS[dist]
    if arity is None:
        return Param(key, dist, tuple(args))
    if len(args) != arity or not all(isinstance(a, int | float) for a in args):
        raise SearchSpaceError(
            f"{where}: search.{key}.{dist} needs {arity} numbers, got {args!r}"
        )
    low, high = args[0], args[1]
    if not low < high:
        raise SearchSpaceError(f"{where}: search.{key}.{dist}: low {low} must be below high {high}")
    if dist.endswith("loguniform") and low <= 0:
        raise SearchSpaceError(f"{where}: search.{key}.{dist}: bounds must be > 0, got {low}")
    if dist == "randint" and not all(isinstance(a, int) for a in args):
        raise SearchSpaceError(f"{where}: search.{key}.randint needs integer bounds")
    if any(math.isnan(float(a)) for a in args):
        raise SearchSpaceError(f"{where}: search.{key}.{dist}: NaN bound")
    return Param(key, dist, tuple(args))


def parse_search_space(raw: Any, where: str,
                       check_key: Callable[[str, Any], None]) -> SearchSpace:
    """Validate a loaded YAML document; ``check_key(key, sample)`` raises on a bad config key."""
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping at the top level")
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(TOP_LEVEL))}"
        )
    if "method" not in raw:
        raise SearchSpaceError(f"{where}: missing key 'method'")
    fixed = dict(raw.get("fixed") or {})
    search = raw.get("search") or {}
    settings = dict(raw.get("search_settings") or {})
    if not isinstance(search, Mapping) or not search:
        raise SearchSpaceError(f"{where}: 'search' must map config keys to distributions")
    bad = set(settings) - SETTINGS
    if bad:
        raise SearchSpaceError(
            f"{where}: unknown search_settings key(s) {', '.join(sorted(bad))}; allowed: "
            f"{', '.join(sorted(SETTINGS))}"
        )
    for key, value in fixed.items():
        _checked(where, f"fixed.{key}", lambda k=key, v=value: check_key(k, v))
    params = []
    for key, spec in search.items():
        if key in fixed:
            raise SearchSpaceError(f"{where}: {key} is both fixed and searched")
        param = _check_param(where, key, spec)
        sample = param.args[0]
        _checked(where, f"search.{key}", lambda k=key, v=sample: check_key(k, v))
        params.append(param)
    start = _start_points(where, raw.get("start_with") or [], params)
    return SearchSpace(method=str(raw["method"]), fixed=fixed, params=tuple(params),
                       settings=settings, source=where, start_points=start)


def _start_points(where: str, raw: Any, params: list[Param]) -> tuple[dict[str, Any], ...]:
    """``start_with``: each point gives every searched key a value inside its bounds."""
    if not isinstance(raw, list):
        raise SearchSpaceError(f"{where}: start_with must be a list of mappings, got {raw!r}")
    keys = {p.key: p for p in params}
    points = []
    for i, point in enumerate(raw):
        if not isinstance(point, Mapping):
            raise SearchSpaceError(f"{where}: start_with[{i}] must map searched keys to values")
        extra, missing = set(point) - set(keys), set(keys) - set(point)
        if extra or missing:
            raise SearchSpaceError(
                f"{where}: start_with[{i}] must give exactly the searched keys; "
                + "; ".join(f"{label}: {', '.join(sorted(ks))}" for label, ks in
                            (("not searched", extra), ("missing", missing)) if ks))
        for key, value in point.items():
            if not keys[key].contains(value):
                raise SearchSpaceError(
                    f"{where}: start_with[{i}].{key}: {value!r} is outside search.{key} "
                    f"{keys[key].dist} {list(keys[key].args)}")
        points.append(dict(point))
    return tuple(points)


def _checked(where: str, label: str, check: Callable[[], None]) -> None:
    try:
        check()
    except ConfigError as exc:
        raise SearchSpaceError(f"{where}: {label}: {exc}") from exc


def load_search_space(path: str | Path, check_key: Callable[[str, Any], None]) -> SearchSpace:
    """Read and validate ``path`` (see the module docstring for the format)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"{path}: no such search-space file") from None
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: not valid YAML ({exc})") from exc
    return parse_search_space(raw, str(path), check_key)
