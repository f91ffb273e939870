"""Methods and models by name: what the rest of ray_fer asks instead of naming one.

A :class:`Model` is a network: its factory, its default input, its task and the layer
Grad-CAM reads. A :class:`Method` is a way to train one: the steps the training loop
calls, the validation metric, the packaged config and options, and what the rest of the
system needs to know (its worker limit, whether its checkpoints hold an inference
network, its figures). Each method module registers its own with :func:`register_model`
and :func:`register_method` when imported, and :mod:`ray_fer.methods` imports every one,
so an import of anything in the package sees them all (the pattern of timm's registry).

A factory is called as ``factory(*, num_classes, in_channels, image_size, **options)``;
its remaining keyword parameters are the model's options (what configs and search spaces
may set under ``model.options``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import nn

from ray_fer.config import Config, ConfigError, build_config, coerce, merged
from ray_fer.data.info import DataInfo
from ray_fer.data.targets import targets_label
from ray_fer.methods.base import TASKS, VA_OUTPUTS, RunFigures, Sums, Task, TrainState

REQUIRED_ARGUMENTS = ("num_classes", "in_channels", "image_size")


@dataclass(frozen=True)
class Model:
    """A network by name: its factory, what it is built for unless told otherwise, and
    the layer Grad-CAM reads in it (a module path, or a function of the built network
    that gives one; None: explain needs ``--layer``)."""

    name: str
    build: Callable[..., nn.Module]
    image_size: int
    channels: int
    task: Task
    explain_layer: str | Callable[[nn.Module], str] | None = None

    def options(self) -> dict[str, Any]:
        """The options the factory accepts beyond the required arguments, with defaults."""
        parameters = inspect.signature(self.build).parameters
        return {key: p.default for key, p in parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and key not in REQUIRED_ARGUMENTS}

    def gradcam_layer(self, network: nn.Module) -> str | None:
        """The Grad-CAM layer of ``network`` (built by this model), or None."""
        if callable(self.explain_layer):
            return self.explain_layer(network)
        return self.explain_layer


Optimizers = tuple[dict[str, torch.optim.Optimizer],
                   dict[str, torch.optim.lr_scheduler.LRScheduler]]


@dataclass(frozen=True)
class Method:
    """One way to train a model: the functions the training loop calls and what the rest
    of the system asks about it.

    Steps: ``build_modules(cfg, info)`` → named networks (checkpointed by name; the
    inference network is ``model``); ``build_optimizers(cfg, modules, steps_per_epoch)``
    → named optimizers and LR schedulers; ``train_batch(state, batch)`` → one
    optimisation step's sums; ``eval_batch(state, batch)`` → sums over one validation
    batch; ``summarize(sums, prefix, info)`` → epoch metrics from all-reduced sums. Sums
    include ``count``, the rows they cover.
    """

    name: str
    task: Task
    #: The validation metric that picks the best checkpoint and that Tune optimises.
    metric: str
    mode: Literal["max", "min"]
    build_modules: Callable[[Config, DataInfo], dict[str, nn.Module]]
    build_optimizers: Callable[[Config, dict[str, nn.Module], int], Optimizers]
    train_batch: Callable[[TrainState, dict], Sums]
    eval_batch: Callable[[TrainState, dict], Sums]
    summarize: Callable[[Sums, str, DataInfo], dict[str, float]]
    #: Packaged config, a nested mapping over the dataclass defaults (precedence:
    #: these < ``--config`` < ``--set`` < flags).
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: The dataclass ``options`` are checked against; None: the method takes none.
    options: type | None = None
    #: The most workers one run may have (None: any number, in DDP).
    max_workers: int | None = None
    #: Whether a checkpoint's ``model`` network maps faces to the method's outputs, so
    #: that explain, predict and export take it.
    inference: bool = True
    #: Named PNGs from the validation sums, written to TensorBoard at each new best epoch.
    figures: Callable[[Sums, DataInfo], dict[str, bytes]] | None = None
    #: The training rows as streamed, from the opened training Dataset (e.g. under- or
    #: over-sampled); None = every training row once per epoch.
    resample_train: Callable[[Config, Any], Any] | None = None
    #: Driver side, once a run has finished: figures from its best checkpoint (the
    #: config and the checkpoint's URI are given).
    after_run: Callable[[Config, str], RunFigures] | None = None
    #: Checks of the config beyond the declared ones; raise ConfigError naming the key.
    check: Callable[[Config], None] | None = None

    def options_of(self, cfg: Config) -> Any:
        """``cfg.options`` as this method's options dataclass (errors name the key)."""
        if self.options is None:
            if cfg.options:
                raise ConfigError(
                    f"unknown config key 'options.{next(iter(cfg.options))}': {self.name} "
                    "takes no method options (model settings go under model.options)")
            return None
        return merged(self.options(), cfg.options, "options.")

    def check_config(self, cfg: Config) -> None:
        """Everything the method declares, checked on ``cfg`` before any work starts:
        options, model options, Mixup/CutMix (class targets only), workers; then
        :attr:`check`. Raises ConfigError naming the key."""
        self.options_of(cfg)
        check_model_options(cfg)
        if self.task != "classify":
            for key in ("mixup_alpha", "cutmix_alpha"):
                if getattr(cfg.augment, key) > 0:
                    raise ConfigError(
                        f"config key 'augment.{key}': {self.name} does not support Mixup/"
                        "CutMix (only the classification methods do); set it to 0")
        workers = cfg.resources.workers
        if self.max_workers is not None and workers > self.max_workers:
            most = "one worker" if self.max_workers == 1 else f"{self.max_workers} workers"
            raise ConfigError(f"config key 'resources.workers': {self.name} trains on {most} "
                              f"per run (got {workers}); search in parallel with python -m "
                              f"ray_fer.tune {self.name} instead")
        if self.check is not None:
            self.check(cfg)

    def outputs(self, class_names: list[str]) -> list[str]:
        """What the columns of its network's output mean: the class names (logits) or
        valence and arousal."""
        return list(class_names) if self.task == "classify" else list(VA_OUTPUTS)

    def targets_note(self, targets: dict) -> str:
        """What a run's reports say about its targets: "derived V/A" when the method
        trains on V/A that the data derived from ratings, else ""."""
        return "" if self.task == "classify" else targets_label(targets)


_MODELS: dict[str, Model] = {}
_METHODS: dict[str, Method] = {}
#: Every registered model and method by name (read-only views).
MODELS: Mapping[str, Model] = MappingProxyType(_MODELS)
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)


def _add(table: dict, item: Model | Method, what: str):
    if item.name in table:
        raise ValueError(f"{what} {item.name!r} is registered twice")
    if item.task not in TASKS:
        raise ValueError(f"{what} {item.name!r}: unknown task {item.task!r}")
    table[item.name] = item
    return item


def register_model(model: Model) -> Model:
    """Add ``model`` under its name (once)."""
    return _add(_MODELS, model, "model")


def register_method(method: Method) -> Method:
    """Add ``method`` under its name (once); it trains the model of the same name unless
    a run's ``model.name`` says otherwise."""
    return _add(_METHODS, method, "method")


def _names(table: Mapping[str, Model | Method], task: Task | None) -> tuple[str, ...]:
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return tuple(sorted(name for name, item in table.items() if task in (None, item.task)))


def model_names(task: Task | None = None) -> tuple[str, ...]:
    """Registered model names (sorted), only those of ``task`` when given."""
    return _names(_MODELS, task)


def method_names(task: Task | None = None) -> tuple[str, ...]:
    """Registered method names (sorted), only those of ``task`` when given."""
    return _names(_METHODS, task)


def _lookup(table: Mapping, name: str, what: str, error: type[Exception]):
    try:
        return table[name]
    except KeyError:
        raise error(f"unknown {what} {name!r}; choose one of: "
                    f"{', '.join(sorted(table))}") from None


def get_model(name: str) -> Model:
    """The model registered as ``name``; ValueError listing the known ones if none is."""
    return _lookup(_MODELS, name, "model", ValueError)


def get_method(name: str) -> Method:
    """The method registered as ``name``; ConfigError listing the known ones if none is."""
    return _lookup(_METHODS, name, "method", ConfigError)


def model_options(name: str) -> dict[str, Any]:
    """The options model ``name`` accepts beyond the required arguments, with defaults."""
    return get_model(name).options()


def build_model(name: str, *, num_classes: int, in_channels: int | None = None,
                image_size: int | None = None, **options: Any) -> nn.Module:
    """Model ``name`` for ``num_classes`` outputs; None sizes take the model's defaults.

    Raises ValueError for an unknown name or invalid sizes, TypeError naming any option
    the model does not accept.
    """
    model = get_model(name)
    in_channels = model.channels if in_channels is None else in_channels
    image_size = model.image_size if image_size is None else image_size
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    accepted = model.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted) or 'none'}")
    return model.build(num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, **options)


def build_network(cfg: Config, info: DataInfo) -> nn.Module:
    """The network ``cfg`` trains (``model.name``, else the method's own) for ``info``."""
    return build_model(cfg.model_name, num_classes=info.num_classes, in_channels=info.channels,
                       image_size=info.image_size, **cfg.model.options)


def option_types(name: str) -> dict[str, Any]:
    """The annotated type of each option of model ``name`` (``Any`` where unannotated)."""
    build = get_model(name).build
    hints = typing.get_type_hints(getattr(build, "func", build))  # a functools.partial
    return {key: hints.get(key, Any) for key in model_options(name)}


def check_model_options(cfg: Config) -> None:
    """ConfigError naming the ``model.options`` key the configured model does not take, or
    whose value it cannot take: of another type than the model's factory declares, an
    integer option (a size, count or stride) below 1, or a value the factory refuses (a
    dropout of 5) when it builds the network on the meta device, where building needs no
    memory and no weights (``pretrained`` is checked by name, not downloaded). A model
    not registered under ``model.name`` is named too."""
    try:
        accepted = model_options(cfg.model_name)
    except ValueError as exc:
        raise ConfigError(f"config key 'model.name': {exc}") from None
    for key in cfg.model.options:
        if key not in accepted:
            raise ConfigError(
                f"unknown config key 'model.options.{key}'; model {cfg.model_name!r} "
                f"accepts: {', '.join(accepted) or 'none'}")
    types = option_types(cfg.model_name)
    for key, value in cfg.model.options.items():
        typed = coerce(f"model.options.{key}", value, types[key])
        if isinstance(typed, int) and not isinstance(typed, bool) and typed < 1:
            raise ConfigError(f"config key 'model.options.{key}' must be >= 1, got {value!r}")
    size, channels = input_shape(cfg)
    options = {k: None if k == "pretrained" and v == "imagenet" else v
               for k, v in cfg.model.options.items()}
    try:
        with torch.device("meta"):
            build_model(cfg.model_name, num_classes=2, in_channels=channels, image_size=size,
                        **options)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as exc:
        raise ConfigError(f"config key 'model.options' {cfg.model.options}: model "
                          f"{cfg.model_name!r} cannot be built with it at {size} px and "
                          f"{channels} channel(s): {exc}") from exc


def input_shape(cfg: Config) -> tuple[int, int]:
    """(image size, channels) the run feeds its model: configured, else the model's own."""
    model = get_model(cfg.model_name)
    return (cfg.data.image_size or model.image_size, cfg.data.channels or model.channels)


def method_config(name: str, *, files: list[dict] | None = None, sets: list[str] | None = None,
                  flags: dict[str, Any] | None = None) -> Config:
    """The validated run config of method ``name``: its packaged defaults, then ``files``
    (user YAML mappings), ``sets`` (``key.sub=value``) and ``flags`` (dotted key → value)."""
    return build_config(name, get_method(name).defaults, files=files, sets=sets, flags=flags)
