"""Start a run from another run's weights (``model.init``): fine-tuning, e.g. FER2013 → CK+.

Every tensor of the new run's networks (parameters and buffers such as batch-norm
statistics) takes the checkpoint's tensor of the same name. The classifier's output layer
is matched by class name instead of position: its rows for the classes both label sets
share are copied (FER2013's ``angry`` is CK+'s ``anger``), the rows of classes the
checkpoint never saw keep their fresh initialisation. Any other difference (a tensor
missing on either side, or of another shape) is an error naming the tensors: the
checkpoint is of another model, input size or channel count.

Only weights are taken: optimiser, schedule and epoch start afresh (``run.resume`` is
what continues a run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ray_fer.checkpoint import (
    CheckpointError,
    Loaded,
    peek_checkpoint,
    read_checkpoint,
)
from ray_fer.config import Config, ConfigError
from ray_fer.data.info import DataInfo
from ray_fer.data.targets import emotion_name
from ray_fer.methods.registry import Method

log = logging.getLogger(__name__)


def output_layer(module: nn.Module, num_classes: int) -> str | None:
    """Name of the last ``nn.Linear`` with ``num_classes`` outputs (the classifier), or None."""
    found = None
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear) and layer.out_features == num_classes:
            found = name
    return found


def class_rows(new: list[str], old: list[str]) -> list[tuple[int, int]]:
    """(row in the new head, row in the checkpoint's head) of every class both share."""
    index = {emotion_name(name): i for i, name in enumerate(old)}
    return [(i, index[emotion_name(name)]) for i, name in enumerate(new)
            if emotion_name(name) in index]


def check_fit(module: nn.Module, saved: dict[str, torch.Tensor], *,
              new_classes: list[str], where: str) -> set[str]:
    """The keys of ``module``'s classifier head; ConfigError if a tensor of ``saved``
    differs other than in the head's number of classes. Compares names and shapes only,
    so ``module`` may be built on the meta device and ``saved`` peeked."""
    state = module.state_dict()
    head = output_layer(module, len(new_classes)) if new_classes else None
    head_keys = {f"{head}.weight", f"{head}.bias"} if head is not None else set()
    missing = sorted(set(state) - set(saved) - head_keys)
    unexpected = sorted(set(saved) - set(state) - head_keys)

    def fits(key: str) -> bool:
        per_class = 1 if key in head_keys else 0  # a head's rows are its classes
        return state[key].shape[per_class:] == saved[key].shape[per_class:]

    reshaped = sorted(k for k in set(state) & set(saved) if not fits(k))
    if missing or unexpected or reshaped:
        detail = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for label, keys in (("missing in it", missing),
                                               ("not in this model", unexpected),
                                               ("of another shape", reshaped)) if keys)
        raise ConfigError(
            f"config key 'model.init': {where} does not fit this model ({detail}); initialise "
            "from a checkpoint of the same model, input size and channel count"
        )
    return head_keys


def load_matching(module: nn.Module, saved: dict[str, torch.Tensor], *, new_classes: list[str],
                  old_classes: list[str], where: str) -> list[str]:
    """Copy ``saved`` into ``module`` as the module docstring says; returns the classes
    whose classifier rows stay fresh. Raises ConfigError (:func:`check_fit`) before
    changing anything."""
    head_keys = check_fit(module, saved, new_classes=new_classes, where=where)
    rows = class_rows(new_classes, old_classes) if head_keys else []
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if key not in head_keys:
                tensor.copy_(saved[key])
            elif key in saved:
                for new_row, old_row in rows:
                    tensor[new_row].copy_(saved[key][old_row])
    copied = {new_row for new_row, _ in rows}
    return [name for i, name in enumerate(new_classes) if head_keys and i not in copied]


def check_init(method: Method, cfg: Config, info: DataInfo) -> None:
    """What :func:`init_modules` would refuse, refused without its cost: ``method``'s
    modules are built on the meta device and the checkpoint is peeked
    (:func:`~ray_fer.checkpoint.peek_checkpoint`), so no weight is allocated, read
    or copied. Raises ConfigError naming the checkpoint when it does not fit."""
    with torch.device("meta"):
        modules = method.build_modules(cfg, info)
    saved = _networks(modules, _read(cfg, peek_checkpoint), cfg)
    for name, module in modules.items():
        check_fit(module, saved[name], new_classes=info.class_names, where=cfg.model.init)


def init_modules(modules: dict[str, nn.Module], cfg: Config, info: DataInfo) -> None:
    """Load ``cfg.model.init``'s weights into ``modules`` (matched by name); see the module
    docstring. Raises ConfigError naming the checkpoint when it does not fit."""
    uri = cfg.model.init
    loaded = _read(cfg, read_checkpoint)
    saved = _networks(modules, loaded, cfg)
    for name, module in modules.items():
        fresh = load_matching(module, saved[name], new_classes=info.class_names,
                              old_classes=loaded.info.class_names, where=uri)
        if fresh:
            log.info("model.init %s -> %s: the classifier rows of %s start fresh (the "
                     "checkpoint's classes are %s)", uri, name, fresh, loaded.info.class_names)


def _read(cfg: Config, read: Callable[[str, str | None], Loaded]) -> Loaded:
    """``cfg.model.init`` read by ``read``; its CheckpointError as a ConfigError."""
    try:
        return read(cfg.model.init, cfg.data.endpoint)
    except CheckpointError as e:
        raise ConfigError(f"config key 'model.init': {e}") from e


def _networks(modules: dict[str, nn.Module], loaded: Loaded,
              cfg: Config) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's saved networks; ConfigError unless it holds this run's model and a
    network of each name in ``modules``."""
    uri = cfg.model.init
    if loaded.cfg.model_name != cfg.model_name:
        raise ConfigError(f"config key 'model.init': {uri} holds a {loaded.cfg.model_name} "
                          f"model, this run trains {cfg.model_name}; initialise from a "
                          f"{cfg.model_name} checkpoint")
    saved = loaded.state["modules"]
    absent = sorted(set(modules) - set(saved))
    if absent:
        raise ConfigError(f"config key 'model.init': {uri} has no network named {absent} "
                          f"(it has {sorted(saved)})")
    return saved
