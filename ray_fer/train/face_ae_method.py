"""The face-generating autoencoder's two stages on the one training loop.

``python -m ray_fer.train face_ae``: stage 1, the autoencoder on same-person pairs
(L_AE, :class:`~ray_fer.train.face_ae_steps.FaceAeConfig` under ``options``). Each streamed
training row is paired on the device with a random face of the same person whose V/A
differs, from a :class:`~ray_fer.train.face_ae_steps.PairBank` of the training rows read
from the shards once per worker and held on its device (uint8 at the model's size: about
300 MiB for AFEW-VA's 25k faces at 64 px); validation pairs every validation row with a
fixed partner. Validation reports the encoder's V/A (RMSE, PCC, CCC, SAGR), the
reconstruction of each face at its own V/A (``reconstruction_mse``) and the rendering of
its partner from its appearance at the partner's V/A (``pair_mse``, the best checkpoint's
metric: what stage 2 relies on). At the end the best checkpoint renders the first
validation face over the paper's v x a grid: ``<run>/va_grid.png`` and a TensorBoard image.

``python -m ray_fer.train face_ae_regressor``: stage 2, the ResNet-34 V/A regressor, with
``options.balance`` (:class:`RegressConfig`): ``none`` (the original data), ``under`` /
``over`` (every V/A grid cell capped at / replicated up to ``options.threshold`` rows,
applied to the training stream itself) or ``rerender`` (each batch re-rendered by the
frozen stage-1 autoencoder of ``options.ae_checkpoint`` at V/A uniform in the unit disk).
Metric ``val_mean_ccc`` on the original validation faces, as CAF.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch import nn

from ray_fer.config import Config, ConfigError, merged
from ray_fer.data.shard_source import ROW_ID_STRIDE, row_mask
from ray_fer.data.shards import decode_images, read_manifest
from ray_fer.models.face_ae import (
    FIGURE_AROUSALS,
    FIGURE_VALENCES,
    FaceAutoencoder,
    ae_loss,
    render_va_grid,
)
from ray_fer.models.layers.inputs import fit_images
from ray_fer.models.registry import build_model
from ray_fer.storage import Location, resolve
from ray_fer.train.caf_steps import va_eval_batch, va_summarize
from ray_fer.train.checkpoint import META_FILE, read_checkpoint
from ray_fer.train.face_ae_steps import (
    BALANCES,
    Balance,
    FaceAeConfig,
    PairBank,
    ae_step,
    pair_batch,
    regression_step,
    rerendered_regression_step,
    resample_counts,
    resize,
    unit_range,
)
from ray_fer.train.metrics import va_metrics_from_sums, va_sums
from ray_fer.train.steps import (
    DataInfo,
    Method,
    Sums,
    TrainState,
    check_model_options,
    make_optimizer,
    make_scheduler,
    reject_mixing,
)

Split = Literal["train", "val"]
#: Faces converted per chunk when a pair bank is built (bounds the float copy's memory).
_CHUNK = 4096


@dataclass(frozen=True)
class RegressConfig:
    """Stage 2's training data (``options.*`` of ``face_ae_regressor``).

    ``threshold`` is T_u for ``under`` and T_o for ``over``; ``grid_cells`` the cells per
    axis of the V/A grid over [-1, 1]^2 that defines the groups (the paper does not give
    its grid). ``ae_checkpoint``: a stage-1 checkpoint folder, for ``rerender``.
    """

    balance: Balance = "none"
    threshold: int = 500
    grid_cells: int = 10
    ae_checkpoint: str = ""

    def __post_init__(self) -> None:
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {list(BALANCES)}, got {self.balance!r}")
        if self.threshold < 1 or self.grid_cells < 1:
            raise ValueError("threshold and grid_cells must be >= 1")
        if (self.balance == "rerender") != bool(self.ae_checkpoint):
            raise ValueError("balance=rerender needs ae_checkpoint (a stage-1 face_ae "
                             "checkpoint folder), and ae_checkpoint applies only to it")


def ae_config(cfg: Config) -> FaceAeConfig:
    """Stage 1's ``cfg.options`` as a checked :class:`FaceAeConfig`."""
    return merged(FaceAeConfig(), cfg.options, "options.")


def regress_config(cfg: Config) -> RegressConfig:
    """Stage 2's ``cfg.options`` as a checked :class:`RegressConfig`."""
    return merged(RegressConfig(), cfg.options, "options.")


# ------------------------------------------------------------------------- shard rows


def _selection(cfg: Config, split: Split) -> dict:
    """The loop's choice of training or validation rows: splits, and folds when
    ``data.fold`` is set (keyword arguments of the shard reader's row mask)."""
    fold = cfg.data.fold
    if split == "train":
        return {"splits": cfg.data.train_splits, "folds": None,
                "exclude_folds": None if fold is None else [fold]}
    if fold is None:
        return {"splits": [cfg.data.val_split], "folds": None, "exclude_folds": None}
    return {"splits": cfg.data.train_splits, "folds": [fold], "exclude_folds": None}


def selected_rows(cfg: Config, columns: list[str], split: Split) -> tuple[pa.Table, np.ndarray]:
    """``columns`` of the run's training or validation rows and their stream row ids, in
    row-id order."""
    loc = resolve(cfg.data.uri, cfg.data.endpoint)
    manifest = read_manifest(loc)
    select = _selection(cfg, split)
    tables, ids = [], []
    for index, shard in enumerate(manifest.shards):
        table = pq.read_table(loc.join(shard.file), columns=[*columns, "split", "fold"],
                              filesystem=loc.fs)
        keep = np.flatnonzero(row_mask(table, **select))
        tables.append(table.select(columns).take(keep))
        ids.append(index * ROW_ID_STRIDE + keep)
    return pa.concat_tables(tables), np.concatenate(ids).astype(np.int64)


def _faces(column: pa.ChunkedArray, shape: list[int], size: int, channels: int) -> torch.Tensor:
    """Stored faces → uint8 (N, channels, size, size), converted in chunks."""
    pixels = torch.from_numpy(decode_images(column, shape))
    out = [(fit_images(part.permute(0, 3, 1, 2).float() / 255, size, channels) * 255)
           .round_().clamp_(0, 255).to(torch.uint8) for part in pixels.split(_CHUNK)]
    return torch.cat(out) if out else torch.empty(0, channels, size, size, dtype=torch.uint8)


def pair_bank(cfg: Config, info: DataInfo, split: Split) -> PairBank:
    """The :class:`PairBank` of the run's ``split`` rows at the model's input shape."""
    table, ids = selected_rows(cfg, ["image", "subject_id", "valence", "arousal"], split)
    shape = read_manifest(resolve(cfg.data.uri, cfg.data.endpoint)).image_shape
    bank = PairBank(ids, _faces(table["image"], shape, info.image_size, info.channels),
                    table["subject_id"].to_numpy(zero_copy_only=False),
                    table["valence"].to_numpy(), table["arousal"].to_numpy(), cfg.train.seed)
    if len(bank) == 0:
        raise ConfigError(
            f"config key 'data.uri': the {split} rows of {cfg.data.uri} hold no pair of one "
            "person (subject_id) with two different valence/arousal values; stage 1 of "
            "face_ae needs them (e.g. afew-va, taiwanese, jaffe or the synthetic set)")
    return bank


def _first_face(cfg: Config, info: DataInfo) -> torch.Tensor:
    """The first validation face (C, S, S) in [0, 1] at the model's input shape, reading
    one row group at a time (not the whole image column)."""
    loc = resolve(cfg.data.uri, cfg.data.endpoint)
    manifest = read_manifest(loc)
    select = _selection(cfg, "val")
    for shard in manifest.shards:
        pf = pq.ParquetFile(loc.fs.open_input_file(loc.join(shard.file)))
        for group in range(pf.num_row_groups):
            keep = np.flatnonzero(row_mask(pf.read_row_group(group, columns=["split", "fold"]),
                                            **select))
            if keep.size:
                image = pf.read_row_group(group, columns=["image"])["image"].take(keep[:1])
                return _faces(image, manifest.image_shape, info.image_size,
                              info.channels)[0].float() / 255
    raise ConfigError(f"{loc.uri}: no validation row to render the V/A grid from")


def load_autoencoder(uri: str, endpoint: str | None) -> FaceAutoencoder:
    """The stage-1 autoencoder of checkpoint folder ``uri`` (local or s3://), frozen, in
    eval mode."""
    loaded = read_checkpoint(uri, endpoint)
    if loaded.cfg.method != "face_ae":
        raise ConfigError(f"config key 'options.ae_checkpoint': {uri} is a "
                          f"{loaded.cfg.method} checkpoint, not a stage-1 face_ae one")
    ae = build_model(loaded.cfg.model_name, num_classes=loaded.info.num_classes,
                     in_channels=loaded.info.channels, image_size=loaded.info.image_size,
                     **loaded.cfg.model.options)
    loaded.restore({"model": ae})
    return ae.requires_grad_(False).eval()


def _random_seed() -> int:
    """A seed from torch's global generator, which the loop reseeds per (epoch, rank)."""
    return int(torch.randint(2**62, (1,)).item())


# ------------------------------------------------------------------ stage 1: autoencoder


def _ae_modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    ae = build_model(cfg.model_name, num_classes=info.num_classes, in_channels=info.channels,
                     image_size=info.image_size, **cfg.model.options)
    return {"model": ae, "train_pairs": pair_bank(cfg, info, "train"),
            "val_pairs": pair_bank(cfg, info, "val")}


def _one_optimizer(cfg: Config, modules: dict[str, nn.Module], steps_per_epoch: int):
    opt = make_optimizer(cfg, modules["model"].parameters())
    return {"model": opt}, {"model": make_scheduler(cfg, opt, steps_per_epoch)}


def _ae_train(state: TrainState, batch: dict) -> Sums:
    generator = torch.Generator(device=state.device).manual_seed(_random_seed())
    pairs = pair_batch(state.modules["train_pairs"], batch["image"], batch["row"], generator)
    if pairs is None:
        return {}
    with state.autocast():
        stats = ae_step(state.train_modules["model"], state.optimizers["model"], pairs,
                        ae_config(state.cfg))
    state.schedulers["model"].step()
    n = torch.full((), float(len(pairs["image_i"])), device=state.device)
    return {"loss_sum": stats["loss"] * n, "valence_se": stats["valence_mse"] * n,
            "arousal_se": stats["arousal_mse"] * n, "pair_se": stats["pair_mse"] * n,
            "pairs": n, "count": n}


def _ae_eval(state: TrainState, batch: dict) -> Sums:
    ae = state.modules["model"]
    target = torch.stack([batch["valence"], batch["arousal"]], dim=1).float()
    labelled = target.isfinite().all(1)
    images = resize(unit_range(batch["image"][labelled]), ae.image_size)
    target = target[labelled]
    with state.autocast():
        z, v, a = ae.encode(images)
        own = ae.decode(z, target[:, 0], target[:, 1]).float()
    pred = torch.stack([v, a], dim=1).float()
    squared = (pred - target) ** 2
    sums = {f"va_{k}": value for k, value in va_sums(pred, target).items()}
    sums |= {"valence_se": squared[:, 0].sum(), "arousal_se": squared[:, 1].sum(),
             "recon_se": ((own - images) ** 2).flatten(1).mean(1).sum(),
             "count": labelled.sum().float()}
    pairs = pair_batch(state.modules["val_pairs"], batch["image"], batch["row"])
    if pairs is not None:
        with state.autocast():
            loss = ae_loss(ae, pairs["image_i"], pairs["image_j"], pairs["va_i"], pairs["va_j"])
        n = torch.full((), float(len(pairs["image_i"])), device=state.device)
        sums |= {"pair_se": loss.reconstruction.float() * n, "pairs": n}
    return sums


def _ae_summarize(sums: Sums, prefix: str, info: DataInfo) -> dict[str, float]:
    count, pairs = float(sums.get("count", 0.0)), float(sums.get("pairs", 0.0))
    out = {f"{prefix}_pair_mse": float(sums["pair_se"]) / pairs if pairs else float("nan")}
    if count:
        out[f"{prefix}_valence_mse"] = float(sums["valence_se"]) / count
        out[f"{prefix}_arousal_mse"] = float(sums["arousal_se"]) / count
        if "loss_sum" in sums:
            out[f"{prefix}_loss"] = float(sums["loss_sum"]) / count
        if "recon_se" in sums:
            out[f"{prefix}_reconstruction_mse"] = float(sums["recon_se"]) / count
        if "va_count" in sums:
            va = va_metrics_from_sums({k[3:]: v for k, v in sums.items() if k.startswith("va_")})
            out |= {f"{prefix}_{k}": v for k, v in va.items()}
    return out


def _ae_check(cfg: Config) -> None:
    ae_config(cfg)
    check_model_options(cfg)
    reject_mixing(cfg, "face_ae")
    if cfg.resources.workers != 1:
        # L_AE calls the encoder and decoder separately, past a DDP wrapper's forward:
        # its gradients would not be synchronised.
        raise ConfigError("config key 'resources.workers': stage 1 of face_ae trains on one "
                          f"worker per run (got {cfg.resources.workers})")


def _write(run: Location, name: str, data: bytes) -> None:
    with run.fs.open_output_stream(run.join(name)) as out:
        out.write(data)


def _tensorboard_image(run: Location, tag: str, image: np.ndarray, step: int) -> None:
    """Add an (H, W, 3) uint8 image to the run's TensorBoard folder (local or S3)."""
    from torch.utils.tensorboard import SummaryWriter

    from ray_fer.train.checkpoint import copy_folder
    from ray_fer.train.loop import TENSORBOARD_DIR

    with tempfile.TemporaryDirectory(prefix="ray_fer-tb-") as tmp:
        writer = SummaryWriter(tmp)
        writer.add_image(tag, image, step, dataformats="HWC")
        writer.close()
        copy_folder(pafs.LocalFileSystem(), tmp, run.fs, run.join(TENSORBOARD_DIR))


def write_va_grid(cfg: Config, checkpoint: str, run: Location) -> None:
    """Render the first validation face over the paper's v x a grid with the autoencoder of
    ``checkpoint``; write ``va_grid.png`` and a TensorBoard image into ``run``."""
    from ray_fer.reports.va_grid import va_grid_mosaic, va_grid_png

    ae = load_autoencoder(checkpoint, cfg.data.endpoint)
    info = DataInfo(class_names=[], image_size=ae.image_size, channels=ae.in_channels)
    face = _first_face(cfg, info)
    grid = render_va_grid(ae, face)
    png = va_grid_png(face, grid, FIGURE_VALENCES, FIGURE_AROUSALS,
                      title=f"{cfg.run.name} · {checkpoint.rstrip('/').rsplit('/', 1)[-1]}: "
                            "one face over valence x arousal")
    _write(run, "va_grid.png", png)
    _tensorboard_image(run, "va_grid", va_grid_mosaic(grid), cfg.train.epochs)


def _ae_after_run(cfg: Config, outcome) -> None:
    from ray_fer.train.loop import run_location

    write_va_grid(cfg, outcome.best_checkpoint or outcome.latest_checkpoint, run_location(cfg))


# ------------------------------------------------------------------ stage 2: regressor


def _regress_modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    options = regress_config(cfg)
    modules = {"model": build_model(cfg.model_name, num_classes=info.num_classes,
                                    in_channels=info.channels, image_size=info.image_size,
                                    **cfg.model.options)}
    if options.balance == "rerender":
        ae = load_autoencoder(options.ae_checkpoint, cfg.data.endpoint)
        if ae.in_channels != info.channels:
            raise ConfigError(f"config key 'options.ae_checkpoint': its autoencoder renders "
                              f"{ae.in_channels} channel(s), the regressor reads "
                              f"{info.channels}; set data.channels to {ae.in_channels}")
        modules["ae"] = ae
    return modules


def _regress_train(state: TrainState, batch: dict) -> Sums:
    model, optimizer = state.train_modules["model"], state.optimizers["model"]
    images = batch["image"]
    with state.autocast():
        if "ae" in state.modules:
            rng = np.random.default_rng(_random_seed())
            stats = rerendered_regression_step(model, state.modules["ae"], optimizer, images,
                                               rng, output_size=state.info.image_size)
            n = float(len(images))
        else:
            target = torch.stack([batch["valence"], batch["arousal"]], dim=1).float()
            labelled = target.isfinite().all(1)
            stats = regression_step(model, optimizer, images[labelled], target[labelled])
            n = float(labelled.sum())
    state.schedulers["model"].step()
    count = torch.full((), n, device=state.device)
    return {"loss_sum": stats["loss"] * count, "count": count}


def _regress_check(cfg: Config) -> None:
    options = regress_config(cfg)
    check_model_options(cfg)
    reject_mixing(cfg, "face_ae_regressor")
    if options.ae_checkpoint:
        loc = resolve(options.ae_checkpoint, cfg.data.endpoint)
        if loc.fs.get_file_info(loc.join(META_FILE)).type != pafs.FileType.File:
            raise ConfigError(f"config key 'options.ae_checkpoint': {loc.uri} is not a "
                              "checkpoint folder (no meta.json); pass a stage-1 run's "
                              "best_checkpoint, e.g. runs/<name>/checkpoint_epoch-0009")


def repeat_rows(batch: pa.Table, ids: np.ndarray, counts: np.ndarray) -> pa.Table:
    """``batch`` with each row repeated ``counts`` times (0: dropped), rows matched by
    their ``row`` id to the sorted ``ids``."""
    rows = batch["row"].to_numpy()
    at = np.minimum(np.searchsorted(ids, rows), len(ids) - 1)
    times = np.where(ids[at] == rows, counts[at], 0)
    return batch.take(np.repeat(np.arange(len(rows)), times))


def _regress_resample(cfg: Config, train):
    """The training stream under-/over-sampled over the V/A grid (other balances: as is)."""
    options = regress_config(cfg)
    if options.balance not in ("under", "over"):
        return train
    table, ids = selected_rows(cfg, ["valence", "arousal"], "train")
    counts = resample_counts(table["valence"].to_numpy(), table["arousal"].to_numpy(),
                             options.balance, options.threshold, options.grid_cells,
                             cfg.train.seed)
    keep = counts > 0
    return train.map_batches(repeat_rows, fn_kwargs={"ids": ids[keep], "counts": counts[keep]},
                             batch_format="pyarrow", batch_size=None)


#: Stage 1: the autoencoder (``python -m ray_fer.train face_ae``).
FACE_AE = Method(family="face_ae", metric="val_pair_mse", mode="min",
                 build_modules=_ae_modules, build_optimizers=_one_optimizer,
                 train_batch=_ae_train, eval_batch=_ae_eval, summarize=_ae_summarize,
                 check_config=_ae_check, after_run=_ae_after_run)

#: Stage 2: the V/A regressor (``python -m ray_fer.train face_ae_regressor``).
FACE_AE_REGRESSOR = Method(family="face_ae", metric="val_mean_ccc", mode="max",
                           build_modules=_regress_modules, build_optimizers=_one_optimizer,
                           train_batch=_regress_train, eval_batch=va_eval_batch,
                           summarize=va_summarize, check_config=_regress_check,
                           resample_train=_regress_resample)
