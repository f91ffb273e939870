"""Run configuration: dataclasses, loaded from YAML and overridden from the command line.

Precedence (later wins): dataclass defaults < the method's packaged defaults (declared
beside the method, :attr:`ray_fer.methods.registry.Method.defaults`) < a user YAML
(``--config``) < ``--set key.sub=value`` overrides < first-class CLI flags.

This module imports neither Ray nor torch nor any other part of ray_fer but its errors:
every layer above reads configs.

Every value is checked against the dataclass field it lands in: an unknown key or a value
of the wrong type raises :class:`ConfigError` naming the key, before any work starts.
A :class:`Config` round-trips through ``to_dict``/``from_dict`` (and YAML), so it is stored
with every run and checkpoint. It never holds credentials: S3 access comes from the
standard AWS sources (see :mod:`ray_fer.storage`); only the endpoint URL is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ray_fer.errors import UserError

#: ``data.cache`` values: cache on CUDA when it fits (auto), always (on), never (off).
CacheMode = Literal["auto", "on", "off"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)


class ConfigError(UserError, ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


@dataclass
class DataSection:
    """Where the faces come from and which rows train and validate."""

    #: Shard prefix (local path or s3://); empty = the embedded synthetic default set.
    uri: str = ""
    #: Splits whose rows train (with ``fold`` set: the rows of the other folds).
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    #: Split that validates (ignored when ``fold`` is set).
    val_split: str = "val"
    #: k-fold protocols: validate on this fold, train on the others (folds are by subject).
    fold: int | None = None
    #: Model input size; None = the model's default (the stream resizes stored faces).
    image_size: int | None = None
    #: 1 (gray) or 3 (RGB); None = the model's default.
    channels: int | None = None
    #: S3 endpoint URL (not a credential); None = AWS_ENDPOINT_URL[_S3] or AWS's default.
    endpoint: str | None = None
    #: Rows held by the local shuffle buffer of the training stream (0 = block shuffle only).
    shuffle_buffer: int = 2048
    #: Keep each worker's rows on its device after the first epoch: auto (CUDA, when they
    #: fit), on (any device), off (stream every epoch). See ray_fer.data.device_cache.
    cache: CacheMode = "auto"
    #: Share of the device memory free at the start that each split's cache may take.
    cache_fraction: float = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (all of it configurable from YAML; defaults suit 48 px faces).

    ``where="worker"`` runs :func:`ray_fer.data.augment.augment_batch` in the train worker
    on its device, seeded from (seed, epoch, rank), so a fixed seed reproduces every batch;
    ``where="data"`` runs it on Ray Data's CPU workers
    (:func:`ray_fer.data.stream.apply_data_augmentation`), unseeded.

    ``mixup_alpha`` / ``cutmix_alpha`` > 0 turn on Mixup / CutMix of whole training batches
    (:func:`ray_fer.data.augment.draw_mix`), a share ``mix_prob`` of them; with both on,
    each mixed batch uses one of the two at even odds, as timm does. Mixing needs the
    labels, so it runs in :func:`ray_fer.data.stream.iter_train_batches` and only with
    ``where="worker"``.
    """

    enabled: bool = True
    hflip: bool = True
    max_rotate_deg: float = 10.0
    max_translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    crop_padding: int = 0
    erasing_p: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.2)
    where: str = "worker"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so the config stays hashable and comparable.
        object.__setattr__(self, "scale", tuple(float(x) for x in self.scale))
        object.__setattr__(self, "erasing_area", tuple(float(x) for x in self.erasing_area))
        problems = []
        if self.where not in ("worker", "data"):
            problems.append(f"where={self.where!r} (use 'worker' or 'data')")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            problems.append(f"scale={self.scale} (need 0 < min <= max)")
        lo, hi = self.erasing_area if len(self.erasing_area) == 2 else (1.0, 0.0)
        if not 0 <= lo <= hi <= 1:
            problems.append(f"erasing_area={self.erasing_area} (need 0 <= min <= max <= 1)")
        if not 0 <= self.erasing_p <= 1:
            problems.append(f"erasing_p={self.erasing_p} (need 0..1)")
        if self.max_rotate_deg < 0 or self.max_translate < 0 or self.crop_padding < 0:
            problems.append("max_rotate_deg, max_translate and crop_padding must be >= 0")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} (need >= 0; 0 = off)")
        if not 0 <= self.mix_prob <= 1:
            problems.append(f"mix_prob={self.mix_prob} (need 0..1)")
        if self.where == "data" and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            # Ray Data's augmentation sees no labels to mix along with the pixels.
            problems.append("mixup_alpha/cutmix_alpha > 0 need where='worker' (mixing "
                            "mixes labels too, which only the train worker can)")
        if problems:
            raise ValueError("invalid augment config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> AugmentConfig:
        """Build from a YAML mapping; unknown keys are an error naming them."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown augment option(s) {unknown}; known: {sorted(known)}")
        return cls(**raw)

    @property
    def geometric(self) -> bool:
        """Whether any rotation/translation/scale/crop is on (needs a grid_sample)."""
        return (self.max_rotate_deg > 0 or self.max_translate > 0 or self.crop_padding > 0
                or self.scale != (1.0, 1.0))

    @property
    def mixing(self) -> bool:
        """Whether training batches are mixed (Mixup or CutMix, on the train worker)."""
        return (self.enabled and self.where == "worker"
                and (self.mixup_alpha > 0 or self.cutmix_alpha > 0))


@dataclass
class ModelSection:
    """The network; ``name`` empty = the method's own name."""

    name: str = ""
    #: Keyword options of the model factory (e.g. hidden, dropout, pretrained).
    options: dict = field(default_factory=dict)
    #: A ray_fer checkpoint folder (local or s3://) whose weights start this run, e.g. a
    #: FER2013 run's to fine-tune on CK+; the classifier's rows are matched by class name
    #: (see ray_fer.train.init_from). Empty = fresh weights.
    init: str = ""


@dataclass
class OptimSection:
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    #: Decoupled/optimizer weight decay; distinct from the explicit L2 term ``loss.l2``.
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    beta1: float = 0.9
    beta2: float = 0.999
    schedule: Literal["onecycle", "cosine", "step", "none"] = "onecycle"
    #: Fraction of the run spent warming up (onecycle, cosine).
    warmup: float = 0.3
    #: ``step`` schedule: multiply the lr by ``gamma`` every ``step_epochs`` epochs.
    step_epochs: int = 10
    gamma: float = 0.1
    #: Final lr as a fraction of ``lr`` (onecycle, cosine).
    final_lr_ratio: float = 1e-3


@dataclass
class LossSection:
    #: λ of the explicit penalty λ·Σw² over weight tensors (biases and norm params excluded).
    l2: float = 0.0
    label_smoothing: float = 0.0
    #: Train on the shards' soft labels (e.g. FER+ vote shares) where present.
    soft_labels: bool = False


@dataclass
class TrainSection:
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 256
    seed: int = 0
    #: torch.compile with static shapes (GPU only; training drops the last partial batch).
    compile: bool = False
    #: With ``compile``, on GPU, in a one-worker run: replay each compiled training step as
    #: CUDA graphs (torch.compile's "reduce-overhead"), removing the per-kernel launch cost
    #: that bounds models of many small kernels at small inputs (the efficient backbones at
    #: 48 px: 3-4x on an H100). Ignored otherwise (DDP's all-reduce is not captured).
    cuda_graphs: bool = False
    #: bf16 autocast on GPU (ignored on CPU).
    bf16: bool = True
    #: channels_last memory format on GPU for convnets (ignored on CPU).
    channels_last: bool = True
    #: Validation faces explained (Grad-CAM, Guided Grad-CAM) in TensorBoard at each new
    #: best epoch; 0 = none.
    explain_images: int = 8


@dataclass
class ResourcesSection:
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: int = 1
    #: GPUs per worker; a fraction lets several Tune trials share one GPU.
    gpus_per_worker: float = 1.0
    #: Placement of a run's workers: PACK (fewest nodes, fast DDP), SPREAD (across nodes),
    #: STRICT_PACK (one node) or STRICT_SPREAD (one worker per node).
    placement: str = "PACK"
    #: Custom resources each worker needs, e.g. ``{"a100": 1}`` to pin workers to the nodes
    #: that advertise ``a100`` (``--set resources.custom.a100=1``).
    custom: dict[str, float] = field(default_factory=dict)
    #: A one-worker Tune trial trains in the trial's own (reused) process instead of
    #: starting a Ray Train controller and worker: about a second from trial to first
    #: step instead of tens. False: every trial runs on Ray Train, as DDP trials do.
    in_trial: bool = True


@dataclass
class RunSection:
    #: Run name (a folder under ``storage``); empty = ``<method>-<UTC time>``.
    name: str = ""
    #: Local folder or s3:// prefix that holds runs.
    storage: str = "runs"
    #: Continue the run ``name`` from its latest checkpoint.
    resume: bool = False
    #: Checkpoints kept besides the latest (the best ones by the method's metric).
    keep_checkpoints: int = 1
    #: Worker-group restarts from the latest checkpoint after a failure.
    max_failures: int = 0


@dataclass
class Config:
    """Everything one training run needs; ``method`` picks the training steps."""

    method: str
    data: DataSection = field(default_factory=DataSection)
    #: Training augmentation (the stream's own config; ``augment.enabled`` = --augment).
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    run: RunSection = field(default_factory=RunSection)
    #: Method-specific settings (CAF margins, face-AE stages ...), checked by the method.
    options: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model.name or self.method

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists) that YAML and JSON can hold."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict) -> Config:
        """Build and validate a config from a nested mapping (e.g. a stored config.yaml)."""
        if not isinstance(raw, dict) or "method" not in raw:
            raise ConfigError("config: a mapping with a 'method' key is required")
        cfg = merged(cls(method=coerce("method", raw["method"], str)),
                     {k: v for k, v in raw.items() if k != "method"})
        validate(cfg)
        return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted to the annotated type ``tp``; ConfigError naming ``key`` if not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        empty = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if empty and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key {key!r}: must be null")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r}: expects a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ConfigError(f"config key {key!r}: expects {len(items)} values, got {value!r}")
        return tuple(coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(
            zip(value, items, strict=True)))
    if tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"config key {key!r}: must be a finite number, got {value!r}")
            return number
    elif tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"config key {key!r}: expects {_type_name(tp)}, got {value!r}")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _unknown(key: str, hints: dict) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(hints))}")


def merged(obj: Any, raw: dict, prefix: str = "") -> Any:
    """A copy of the dataclass ``obj`` with the nested mapping ``raw`` applied (keys checked).

    Works on frozen sections too (the stream's :class:`AugmentConfig`): every level is
    rebuilt with :func:`dataclasses.replace`, whose own checks become ConfigErrors.
    """
    where = prefix.rstrip(".") or "root"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {where!r}: expects a mapping, got {raw!r}")
    hints = _hints(obj)
    changes = {}
    for key, value in raw.items():
        here = prefix + str(key)
        if key not in hints:
            raise _unknown(here, hints)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merged(current, value, prefix=here + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            changes[key] = deep_merge(current, value)
        else:
            changes[key] = coerce(here, value, hints[key])
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {where!r}: {exc}") from exc


def _nested(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def override(cfg: Config, key: str, value: Any) -> Config:
    """``cfg`` with dotted ``key`` (e.g. ``optim.lr``) set to ``value`` converted to its type.

    Below a ``dict`` field (``model.options.dropout``, ``options.margin``) a string value is
    read as a YAML scalar and stored as such; the owner of that mapping checks it.
    """
    target: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(target, dict):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            break
        hints = _hints(target)
        if part not in hints:
            raise _unknown(".".join(parts[: i + 1]), hints)
        target = getattr(target, part)
    return merged(cfg, _nested(key, value))


#: Ray placement-group strategies for a run's workers.
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def validate(cfg: Config) -> None:
    """Range checks the types cannot express; the message names the key."""
    checks = [
        *((key, False, "must be a finite number") for key in _non_finite(cfg.to_dict())),
        ("train.epochs", cfg.train.epochs >= 1, "must be >= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "must be >= 1"),
        ("train.eval_batch_size", cfg.train.eval_batch_size >= 1, "must be >= 1"),
        ("train.explain_images", cfg.train.explain_images >= 0, "must be >= 0"),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup", 0 <= cfg.optim.warmup < 1, "must be in [0, 1)"),
        ("optim.momentum", 0 <= cfg.optim.momentum < 1, "must be in [0, 1)"),
        ("optim.beta1", 0 <= cfg.optim.beta1 < 1, "must be in [0, 1)"),
        ("optim.beta2", 0 <= cfg.optim.beta2 < 1, "must be in [0, 1)"),
        ("optim.step_epochs", cfg.optim.step_epochs >= 1, "must be >= 1"),
        ("optim.gamma", cfg.optim.gamma > 0, "must be > 0"),
        ("optim.final_lr_ratio", 0 <= cfg.optim.final_lr_ratio <= 1, "must be in [0, 1]"),
        ("loss.l2", cfg.loss.l2 >= 0, "must be >= 0"),
        ("loss.label_smoothing", 0 <= cfg.loss.label_smoothing < 1, "must be in [0, 1)"),
        ("data.channels", cfg.data.channels in (None, 1, 3), "must be 1 or 3"),
        ("data.image_size", cfg.data.image_size is None or cfg.data.image_size >= 8,
         "must be >= 8"),
        ("data.fold", cfg.data.fold is None or cfg.data.fold >= 0, "must be >= 0"),
        ("data.train_splits", bool(cfg.data.train_splits), "must name at least one split"),
        ("data.cache_fraction", 0 < cfg.data.cache_fraction <= 0.9, "must be in (0, 0.9]"),
        ("resources.workers", cfg.resources.workers >= 1, "must be >= 1"),
        ("resources.cpus_per_worker", cfg.resources.cpus_per_worker >= 1, "must be >= 1"),
        ("resources.gpus_per_worker", cfg.resources.gpus_per_worker > 0, "must be > 0"),
        ("resources.placement", cfg.resources.placement in PLACEMENTS,
         f"must be one of {', '.join(PLACEMENTS)}"),
        *((f"resources.custom.{k}", k not in ("CPU", "GPU", "memory") and isinstance(
            v, int | float) and not isinstance(v, bool) and v > 0,
           "must be an amount > 0 of a custom resource (CPU, GPU, memory have their own keys)")
          for k, v in cfg.resources.custom.items()),
        ("run.keep_checkpoints", cfg.run.keep_checkpoints >= 1, "must be >= 1"),
        ("run.max_failures", cfg.run.max_failures >= -1, "must be >= -1"),
        ("run.name", not cfg.run.name or plain_name(cfg.run.name), NAME_RULE),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} {why}")


#: What :func:`plain_name` asks of a run or experiment name, for messages.
NAME_RULE = "must be one plain folder name (no '/' or '\\', not '.' or '..')"


def plain_name(name: str) -> bool:
    """Whether ``name`` is one plain path segment, so that ``<storage>/<name>`` stays a
    folder inside ``storage`` (``..`` would put the run beside it, ``.`` into it)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def check_name(name: str, flag: str = "--name") -> None:
    """ConfigError naming ``flag`` unless ``name`` is a :func:`plain_name`."""
    if not plain_name(name):
        raise ConfigError(f"{flag} {name!r} {NAME_RULE}")


def _non_finite(raw: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the NaN and infinite floats in ``raw`` (e.g. under ``model.options``,
    which the dataclass types do not reach)."""
    if isinstance(raw, dict):
        return [k for key, value in raw.items() for k in _non_finite(value, f"{prefix}{key}.")]
    if isinstance(raw, list | tuple):
        return [k for i, value in enumerate(raw)
                for k in _non_finite(value, f"{prefix.rstrip('.')}[{i}].")]
    return [prefix.rstrip(".")] if isinstance(raw, float) and not math.isfinite(raw) else []


def deep_merge(base: Mapping, top: Mapping) -> dict:
    """``base`` with ``top`` applied: nested mappings merged key by key, other values replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), Mapping) else v
    return out


def read_yaml(path: str | Path) -> dict:
    """A user config file as a mapping; ConfigError naming the file if it is not one."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expects a mapping at the top level")
    return raw


def build_config(method: str, defaults: Mapping | None = None, *,
                 files: list[dict] | None = None, sets: list[str] | None = None,
                 flags: dict[str, Any] | None = None) -> Config:
    """Assemble a validated config for ``method`` from every source, in precedence order.

    ``defaults``: the method's packaged config (a nested mapping); ``files``: mappings read
    from user YAML files; ``sets``: ``key.sub=value`` strings; ``flags``: dotted key →
    value from first-class CLI flags (None values are skipped).
    """
    cfg = merged(Config(method=method), dict(defaults or {}))
    for raw in files or []:
        raw = dict(raw)
        if raw.pop("method", method) != method:
            raise ConfigError(f"config key 'method': file is for another method, not {method!r}")
        cfg = merged(cfg, raw)
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expects key.sub=value")
        cfg = override(cfg, key.strip(), value)
    for key, value in (flags or {}).items():
        if value is not None:
            cfg = override(cfg, key, value)
    validate(cfg)
    return cfg
