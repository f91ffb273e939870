"""Checkpoint directories: what one epoch of any method leaves behind.

Training writes them, inference (evaluate, explain, predict, export), tune and the
methods that build on another run (the face autoencoder's stage 2) read them; this module
needs neither Ray nor any method. A checkpoint is a folder named
``checkpoint_epoch-<epoch, 4 digits>`` (Ray Train copies it to the run's storage, local
or s3://):

- ``state.pt``: state dicts of every named module, optimizer and LR scheduler, and the
  loop's progress (epoch, best metric and epoch, metric history);
- ``config.yaml``: the run's full :class:`~ray_fer.config.Config`;
- ``meta.json``: method, epoch, class names, input shape, metric, this epoch's metrics
  and the history, readable without torch.

No RNG state is stored: the loop reseeds every epoch from (seed, epoch, rank), so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs
import torch
from torch import nn

from ray_fer.config import Config
from ray_fer.data.info import DataInfo
from ray_fer.errors import UserError
from ray_fer.storage import Location, resolve, storage_error

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
#: The files of every checkpoint folder.
CHECKPOINT_FILES = (STATE_FILE, CONFIG_FILE, META_FILE)
#: A checkpoint folder's name is this prefix and its epoch (from 0).
CHECKPOINT_PREFIX = "checkpoint_epoch-"


def checkpoint_name(epoch: int) -> str:
    """The folder name of epoch ``epoch``'s checkpoint (``checkpoint_epoch-0004``)."""
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch of checkpoint folder ``name``, or None for another name."""
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    return int(name[len(CHECKPOINT_PREFIX):])


class CheckpointError(UserError, RuntimeError):
    """A checkpoint folder is missing or incomplete; the message names it."""


@dataclass
class Progress:
    """Where a run stands: the next epoch to train, the best so far, every epoch's metrics."""

    next_epoch: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


@dataclass
class Loaded:
    """A checkpoint read back: config, data description, progress and raw state dicts."""

    cfg: Config
    info: DataInfo
    progress: Progress
    meta: dict
    state: dict

    def restore(self, modules: dict[str, nn.Module],
                optimizers: dict[str, torch.optim.Optimizer] | None = None,
                schedulers: dict | None = None) -> None:
        """Load the saved state dicts into the given objects (matched by name)."""
        groups = [("modules", modules), ("optimizers", optimizers or {}),
                  ("schedulers", schedulers or {})]
        for kind, objects in groups:
            saved = self.state[kind]
            missing = sorted(set(objects) - set(saved))
            if missing:
                raise CheckpointError(f"checkpoint has no {kind} named {missing}")
            for name, obj in objects.items():
                obj.load_state_dict(saved[name])


def save_checkpoint(directory: str | Path, *, cfg: Config, info: DataInfo,
                    modules: dict[str, nn.Module], optimizers: dict, schedulers: dict,
                    progress: Progress, metrics: dict, metric: str, mode: str) -> None:
    """Write one checkpoint folder (``state.pt``, ``config.yaml``, ``meta.json``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "progress": asdict(progress),
    }
    torch.save(state, directory / STATE_FILE)
    (directory / CONFIG_FILE).write_text(cfg.to_yaml())
    meta = {
        "method": cfg.method,
        "model": cfg.model_name,
        "epoch": progress.next_epoch - 1,
        "class_names": info.class_names,
        "image_size": info.image_size,
        "channels": info.channels,
        "metric": metric,
        "mode": mode,
        "best_value": progress.best_value,
        "best_epoch": progress.best_epoch,
        "metrics": metrics,
        "history": progress.history,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu",
                    *, uri: str | None = None) -> Loaded:
    """Read a local checkpoint folder written by :func:`save_checkpoint` (``uri``: where
    it came from, for messages; default the folder)."""
    directory = Path(directory)
    where = uri or str(directory)
    _checkpoint_location(str(directory), None, CHECKPOINT_FILES)
    state = _torch_state(directory / STATE_FILE, f"{where}/{STATE_FILE}", map_location)
    return _loaded((directory / CONFIG_FILE).read_text(), (directory / META_FILE).read_text(),
                   state, where)


def _torch_state(source: str | Path | BinaryIO, where: str,
                 map_location: str | torch.device) -> dict:
    """``state.pt`` read with ``weights_only`` (tensors and plain containers only, never
    code); CheckpointError naming ``where`` for a damaged, truncated or foreign file.

    torch's own message is not passed on: for a file holding other objects it advises
    loading with ``weights_only=False``, which would run whatever the file holds.
    """
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # the pickle names a function or class to call
            raise CheckpointError(
                f"{where}: refers to code, which no ray_fer checkpoint does; refused unread, "
                "since loading it could run that code. Pass a checkpoint written by ray_fer "
                "training") from None
        raise CheckpointError(f"{where}: cannot be read (not a torch file, or damaged). "
                              "Pass another checkpoint or train again") from None
    except (RuntimeError, EOFError, ValueError, OSError):
        raise CheckpointError(f"{where}: cannot be read (truncated or damaged). Pass another "
                              "checkpoint or train again") from None


def peek_checkpoint(uri: str, endpoint: str | None = None) -> Loaded:
    """The checkpoint folder at ``uri`` (local or s3://) read in place, its tensors on the
    meta device: names, shapes and dtypes without their data.

    Reads only ``state.pt``'s index (a few small ranged reads, however large the file),
    so checking what a checkpoint holds costs no download.
    """
    loc = _checkpoint_location(uri, endpoint, CHECKPOINT_FILES)

    def text(name: str) -> str:
        with loc.fs.open_input_stream(loc.join(name)) as f:
            return f.read().decode()

    with loc.fs.open_input_file(loc.join(STATE_FILE)) as f:
        state = _torch_state(f, loc.child_uri(STATE_FILE), "meta")
    return _loaded(text(CONFIG_FILE), text(META_FILE), state, uri)


def _loaded(config_text: str, meta_text: str, state: dict, where: str) -> Loaded:
    import yaml

    try:
        meta = json.loads(meta_text)
        info = DataInfo(class_names=list(meta["class_names"]),
                        image_size=int(meta["image_size"]), channels=int(meta["channels"]))
        raw_cfg = yaml.safe_load(config_text)
        progress = Progress(**state["progress"])
        if not all(isinstance(state.get(k), dict)
                   for k in ("modules", "optimizers", "schedulers")):
            raise KeyError("modules")
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{where}: not a ray_fer checkpoint ({type(exc).__name__} "
                              f"{exc} in its files); pass a checkpoint written by ray_fer "
                              "training") from None
    return Loaded(cfg=Config.from_dict(raw_cfg), info=info, progress=progress, meta=meta,
                  state=state)


def _checkpoint_location(uri: str, endpoint: str | None, files: tuple[str, ...]) -> Location:
    """``uri`` resolved; CheckpointError when it does not exist or lacks one of ``files``,
    StorageError when its storage refuses to be read (credentials, endpoint)."""
    loc = resolve(uri, endpoint)
    try:
        if loc.fs.get_file_info(loc.path).type == pafs.FileType.NotFound:
            raise CheckpointError(f"{uri}: no such checkpoint folder; pass a checkpoint "
                                  "folder such as <storage>/<run>/checkpoint_epoch-0004")
        infos = loc.fs.get_file_info([loc.join(name) for name in files])
    except OSError as exc:
        raise storage_error(loc, exc) from None
    for name, info in zip(files, infos, strict=True):
        if info.type != pafs.FileType.File:
            raise CheckpointError(
                f"{uri}: not a ray_fer checkpoint ({name} missing); pass a checkpoint "
                "folder such as <storage>/<run>/checkpoint_epoch-0004"
            )
    return loc


@contextlib.contextmanager
def local_checkpoint(uri: str, endpoint: str | None = None) -> Iterator[Path]:
    """A local folder holding the checkpoint at ``uri`` (downloaded first if it is on S3)."""
    loc = _checkpoint_location(uri, endpoint, (META_FILE,))
    if not loc.is_s3:
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="ray_fer-ckpt-") as tmp:
        try:
            copy_folder(loc.fs, loc.path, pafs.LocalFileSystem(), tmp)
        except OSError as exc:
            raise storage_error(loc, exc, "download") from None
        yield Path(tmp)


def read_checkpoint(uri: str, endpoint: str | None = None,
                    map_location: str | torch.device = "cpu") -> Loaded:
    """The checkpoint folder at ``uri`` (local or s3://) read whole; errors name ``uri``."""
    with local_checkpoint(uri, endpoint) as folder:
        return load_checkpoint(folder, map_location=map_location, uri=uri)


def copy_folder(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    """Copy every file below ``src`` to ``dst`` (streams; works between local and S3).

    ``pyarrow.fs.copy_files`` is not used: with an S3 destination it builds ``s3://`` URIs
    that the S3 filesystem then refuses as paths (pyarrow 26).
    """
    for item in src_fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if item.type != pafs.FileType.File:
            continue
        rel = item.path[len(src.rstrip("/")) + 1:]
        target = f"{dst.rstrip('/')}/{rel}"
        if isinstance(dst_fs, pafs.LocalFileSystem):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        with src_fs.open_input_stream(item.path) as fin, dst_fs.open_output_stream(target) as out:
            while chunk := fin.read(8 * 2**20):
                out.write(chunk)
