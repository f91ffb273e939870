"""Search spaces: ``search_spaces/<name>.yaml`` → validated :class:`SearchSpace` → Optuna.

A search-space file is meant to be read and edited by a person::

    method: vgg_bn             # or a list, e.g. [vgg_bn, resnet18]: the method is searched
    fixed:                     # run settings, not searched (dotted config keys)
      train.epochs: 60
    search:                    # dotted config key → distribution
      optim.optimizer: {choice: [sgd, adamw]}
      optim.lr:                # one key, a range per optimizer (exclusive conditions)
        - {loguniform: [1.0e-2, 2.0e-1], when: {optim.optimizer: sgd}}
        - {loguniform: [1.0e-4, 3.0e-3], when: {optim.optimizer: adamw}}
      optim.momentum: {uniform: [0.8, 0.95], when: {optim.optimizer: sgd}}
      model.options.width: {choice: [32, 64], when: {method: deep_emotion_wide}}
      loss.l2:     {loguniform: [1.0e-6, 1.0e-2]}
    search_settings:           # optional; CLI flags win
      num_samples: 16
      max_concurrent: 4
    start_with:                # optional: points tried first
      - packaged               # each method's packaged recipe (its values of the searched keys)
      - {method: vgg_bn, optim.optimizer: sgd, optim.lr: 0.05, optim.momentum: 0.9, loss.l2: 0}

A key with ``when`` is searched only in trials whose earlier ``choice`` keys (or method)
take one of the listed values; elsewhere the trial keeps the base config's value. Keys are
proposed in file order, so a condition names a key above it. Every key, every ``choice``
value and both bounds of every range are checked against each method's run configuration
before any trial starts, each error naming the file and key.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
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
#: The searched key that picks the method of a trial (a space of several methods).
METHOD_KEY = "method"
#: ``start_with`` entry standing for each method's packaged recipe.
PACKAGED = "packaged"

#: ``check(method, key, value)`` raises ConfigError when ``value`` does not fit ``key``.
KeyCheck = Callable[[str, str, Any], None]
#: ``base_value(method, key)``: the value a trial of ``method`` has when ``key`` is not searched.
BaseValue = Callable[[str, str], Any]


class SearchSpaceError(ConfigError):
    """A search-space file is malformed; the message names the file and key."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: config key, distribution, arguments and condition.

    ``name`` is what Optuna and Tune call it: the key itself, or ``key|condition`` for
    one of several ranges of a key under exclusive conditions.
    """

    key: str
    dist: str
    args: tuple
    #: (earlier searched key, values it must take) pairs that must all hold.
    when: tuple[tuple[str, tuple], ...] = ()
    name: str = ""

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies inside this parameter's bounds or values."""
        if self.dist == "choice":
            return value in self.args
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        low, high = self.args[0], self.args[1]
        return low <= value <= high

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter is searched given the values ``chosen`` so far."""
        return all(key in chosen and chosen[key] in values for key, values in self.when)

    def suggest(self, trial) -> Any:
        """A value proposed by the Optuna ``trial`` (Tune's names of the distributions)."""
        if self.dist == "choice":
            return trial.suggest_categorical(self.name, list(self.args))
        low, high = self.args[0], self.args[1]
        if self.dist == "randint":  # Tune's randint excludes the upper bound
            return trial.suggest_int(self.name, low, high - 1)
        if self.dist == "quniform":
            return trial.suggest_float(self.name, low, high, step=self.args[2])
        value = trial.suggest_float(self.name, low, high, log=self.dist != "uniform")
        if self.dist == "qloguniform":
            q = self.args[2]
            return min(max(round(value / q) * q, low), high)
        return value


@dataclass(frozen=True)
class SearchSpace:
    methods: tuple[str, ...]
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: Points (Optuna names → values) that Optuna evaluates before sampling.
    start_points: tuple[dict[str, Any], ...] = ()

    @property
    def keys(self) -> list[str]:
        """The searched config keys (and ``method`` when it is searched), in file order."""
        return list(dict.fromkeys(p.key for p in self.params))

    def assignment(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Config key → value of one trial, from Optuna's names → values (``method`` too)."""
        by_name = {p.name: p.key for p in self.params}
        return {by_name[name]: value for name, value in values.items() if name in by_name}

    def method_of(self, values: Mapping[str, Any]) -> str:
        """The method of a trial with ``values`` (the only one, or the one searched)."""
        return str(values.get(METHOD_KEY, self.methods[0]))

    def pinned(self, values: Mapping[str, Any]) -> SearchSpace:
        """The space with the config keys of ``values`` fixed at those values (flags and
        ``--set`` win over the file): they are no longer searched, and a condition on one
        of them now holds, or fails, for every trial. Start points keep their other
        values."""
        params = []
        for p in self.params:
            if p.key in values or not all(values[k] in allowed for k, allowed in p.when
                                          if k in values):
                continue
            params.append(replace(p, when=tuple((k, a) for k, a in p.when if k not in values)))
        names = {p.name for p in params}
        points = tuple({n: v for n, v in point.items() if n in names}
                       for point in self.start_points)
        return replace(self, params=tuple(params), start_points=points)

    def __call__(self, trial) -> None:
        """Optuna define-by-run: propose every parameter whose condition holds, in order."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                chosen[p.key] = p.suggest(trial)


def _fail(where: str, label: str, why: str) -> SearchSpaceError:
    return SearchSpaceError(f"{where}: {label}: {why}")


def _bounds(where: str, label: str, dist: str, args: Any) -> tuple:
    """The checked arguments of one distribution."""
    if not isinstance(args, list) or not args:
        raise _fail(where, label, f"{dist} needs a list, got {args!r}")
    arity = DISTRIBUTIONS[dist]
    if arity is None:
        bad = [a for a in args if not isinstance(a, str | int | float | bool)]
        if bad:
            raise _fail(where, label, f"choice values must be numbers, strings or booleans, "
                                      f"got {bad[0]!r}")
        if len(set(map(repr, args))) != len(args):
            raise _fail(where, label, f"choice lists a value twice: {args!r}")
        return tuple(args)
    if len(args) != arity or not all(isinstance(a, int | float) and not isinstance(a, bool)
                                      for a in args):
        raise _fail(where, label, f"{dist} needs {arity} numbers, got {args!r}")
    if not all(math.isfinite(a) for a in args):
        raise _fail(where, label, f"{dist} bounds must be finite numbers, got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise _fail(where, label, f"{dist}: low {low} must be below high {high}")
    if dist.endswith("loguniform") and low <= 0:
        raise _fail(where, label, f"{dist}: bounds must be > 0, got {low}")
    if dist == "randint" and not all(isinstance(a, int) for a in args):
        raise _fail(where, label, "randint needs integer bounds")
    if arity == 3 and not args[2] > 0:
        raise _fail(where, label, f"{dist}: the step must be > 0, got {args[2]}")
    return tuple(args)


def _condition(where: str, label: str, raw: Any, earlier: dict[str, Param]
               ) -> tuple[tuple[str, tuple], ...]:
    """``when: {key: value or [values]}`` checked against the choice keys above it."""
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(where, label, f"when must map a searched choice key to its value(s), "
                                  f"got {raw!r}")
    out = []
    for key, values in raw.items():
        values = tuple(values) if isinstance(values, list) else (values,)
        source = earlier.get(key)
        if source is None or source.dist != "choice" or source.when:
            raise _fail(where, label, f"when: {key!r} must be an unconditional choice key "
                                      "searched above this one")
        unknown = [v for v in values if v not in source.args]
        if unknown:
            raise _fail(where, label, f"when: {key} never takes {unknown[0]!r} (its choices: "
                                      f"{list(source.args)})")
        out.append((str(key), values))
    return tuple(out)


def _exclusive(a: Param, b: Param) -> bool:
    """Whether no trial can meet both conditions (they disagree on some key)."""
    theirs = dict(b.when)
    return any(key in theirs and not set(values) & set(theirs[key]) for key, values in a.when)


def _params_of(where: str, key: str, spec: Any, earlier: dict[str, Param]) -> list[Param]:
    """The parameter(s) of one ``search`` entry: a distribution, or a list of them under
    exclusive ``when`` conditions."""
    alternatives = spec if isinstance(spec, list) else [spec]
    params = []
    for i, alt in enumerate(alternatives):
        label = f"search.{key}" + (f"[{i}]" if isinstance(spec, list) else "")
        if not isinstance(alt, Mapping) or len(set(alt) - {"when"}) != 1:
            raise _fail(where, label, f"must be one mapping like {{loguniform: [1e-5, 1e-2]}} "
                                      f"(plus an optional when), got {alt!r}")
        (dist,) = set(alt) - {"when"}
        if dist not in DISTRIBUTIONS:
            raise _fail(where, label, f"unknown distribution {dist!r}; use one of "
                                      f"{', '.join(DISTRIBUTIONS)}")
        when = _condition(where, label, alt["when"], earlier) if "when" in alt else ()
        name = key if len(alternatives) == 1 else key + "|" + ",".join(
            f"{k}={'/'.join(map(str, v))}" for k, v in when)
        params.append(Param(key, dist, _bounds(where, label, dist, alt[dist]), when, name))
    if len(params) > 1 and not all(_exclusive(a, b) for a, b in itertools.combinations(params, 2)):
        raise _fail(where, f"search.{key}", "several ranges need when conditions that exclude "
                                            "each other")
    return params


def _methods_of(param: Param, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The methods whose trials may search ``param``."""
    allowed = dict(param.when).get(METHOD_KEY)
    return tuple(m for m in methods if allowed is None or m in allowed)


def _samples(param: Param) -> Iterator[Any]:
    """The values a parameter's checks try: every choice, both bounds, and for a
    continuous range a non-integer inside it (a float range on an int key must fail)."""
    if param.dist == "choice":
        yield from param.args
        return
    low, high = param.args[0], param.args[1]
    yield low
    yield high - 1 if param.dist == "randint" else high
    continuous = param.dist in ("uniform", "loguniform") or (
        len(param.args) == 3 and not float(param.args[2]).is_integer())
    if continuous:
        yield low + (high - low) * 0.371


def _check_values(where: str, param: Param, methods: tuple[str, ...], check: KeyCheck) -> None:
    for method in _methods_of(param, methods):
        for value in _samples(param):
            try:
                check(method, param.key, value)
            except ConfigError as exc:
                who = f" (method {method})" if len(methods) > 1 else ""
                raise _fail(where, f"search.{param.key}{who}",
                            f"value {value!r} of {param.dist} {list(param.args)}: {exc}"
                            ) from exc


def parse_search_space(raw: Any, where: str, check: KeyCheck,
                       base_value: BaseValue | None = None) -> SearchSpace:
    """Validate a loaded YAML document (see the module docstring).

    ``check(method, key, value)`` raises ConfigError on a value that does not fit a key;
    ``base_value(method, key)`` gives a method's packaged value of a key, which the
    ``packaged`` start point needs.
    """
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping at the top level")
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(TOP_LEVEL))}"
        )
    methods = _method_list(where, raw.get("method"))
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
    if METHOD_KEY in search:
        raise SearchSpaceError(f"{where}: search.method: list the methods under 'method' "
                               "instead")
    for key, value in fixed.items():
        for method in methods:
            try:
                check(method, key, value)
            except ConfigError as exc:
                raise _fail(where, f"fixed.{key}", str(exc)) from exc
    earlier: dict[str, Param] = {}
    params: list[Param] = []
    if len(methods) > 1:
        earlier[METHOD_KEY] = Param(METHOD_KEY, "choice", methods, (), METHOD_KEY)
        params.append(earlier[METHOD_KEY])
    for key, spec in search.items():
        if key in fixed:
            raise SearchSpaceError(f"{where}: {key} is both fixed and searched")
        for param in _params_of(where, str(key), spec, earlier):
            _check_values(where, param, methods, check)
            params.append(param)
        earlier[str(key)] = params[-1]
    space = SearchSpace(methods=methods, fixed=fixed, params=tuple(params), settings=settings,
                        source=where)
    start = _start_points(where, raw.get("start_with") or [], space, base_value)
    return SearchSpace(methods=methods, fixed=fixed, params=tuple(params), settings=settings,
                       source=where, start_points=start)


def _method_list(where: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        raise SearchSpaceError(f"{where}: missing key 'method'")
    methods = tuple(raw) if isinstance(raw, list) else (raw,)
    if not methods or not all(isinstance(m, str) and m for m in methods):
        raise SearchSpaceError(f"{where}: 'method' must be a method name or a list of them, "
                               f"got {raw!r}")
    if len(set(methods)) != len(methods):
        raise SearchSpaceError(f"{where}: 'method' lists a method twice: {list(methods)}")
    return methods


def _start_points(where: str, raw: Any, space: SearchSpace, base_value: BaseValue | None
                  ) -> tuple[dict[str, Any], ...]:
    """``start_with``: each point gives a value inside the bounds to every key searched
    under it, and nothing else; ``packaged`` stands for one point per method."""
    if not isinstance(raw, list):
        raise SearchSpaceError(f"{where}: start_with must be a list of mappings, got {raw!r}")
    points = []
    for i, point in enumerate(raw):
        label = f"start_with[{i}]"
        if point == PACKAGED:
            if base_value is None:
                raise _fail(where, label, "'packaged' needs the methods' configs")
            points += [_point(where, f"{label} ({method}, packaged)", space,
                              _packaged(space, method, base_value)) for method in space.methods]
        elif isinstance(point, Mapping):
            points.append(_point(where, label, space, dict(point)))
        else:
            raise _fail(where, label, f"must map searched keys to values or be "
                                      f"{PACKAGED!r}, got {point!r}")
    return tuple(points)


def _packaged(space: SearchSpace, method: str, base_value: BaseValue) -> dict[str, Any]:
    """The values of ``method``'s packaged recipe for the keys searched in its trials."""
    point: dict[str, Any] = {METHOD_KEY: method} if len(space.methods) > 1 else {}
    for p in space.params:
        if p.key not in point and p.active(point):
            point[p.key] = base_value(method, p.key)
    return point


def _point(where: str, label: str, space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """One start point as Optuna names → values, checked against the searched keys."""
    if len(space.methods) == 1:
        point.pop(METHOD_KEY, None)
    out: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    expected = set()
    for p in space.params:
        if not p.active(chosen) or p.key in chosen:
            continue
        expected.add(p.key)
        if p.key not in point:
            continue
        if not p.contains(point[p.key]):
            raise _fail(where, f"{label}.{p.key}", f"{point[p.key]!r} is outside "
                                                   f"search.{p.key} {p.dist} {list(p.args)}")
        chosen[p.key] = out[p.name] = point[p.key]
    extra, missing = set(point) - expected, expected - set(point)
    if extra or missing:
        raise _fail(where, label, "must give exactly the keys searched under it; " + "; ".join(
            f"{what}: {', '.join(sorted(keys))}" for what, keys in
            (("not searched", extra), ("missing", missing)) if keys))
    return out


def load_search_space(path: str | Path, check: KeyCheck,
                      base_value: BaseValue | None = None) -> SearchSpace:
    """Read and validate ``path`` (see the module docstring for the format)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"{path}: no such search-space file") from None
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: not valid YAML ({exc})") from exc
    return parse_search_space(raw, str(path), check, base_value)
