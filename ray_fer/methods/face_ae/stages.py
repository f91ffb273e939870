"""The face-generating autoencoder's two stages bound to the training loop.

``python -m ray_fer.train face_ae``: stage 1, the autoencoder on same-person pairs
(L_AE, :class:`~ray_fer.methods.face_ae.steps.FaceAeOptions` under ``options``). Each
streamed
training row is paired on the device with a random face of the same person whose V/A
differs, from a :class:`~ray_fer.methods.face_ae.steps.PairBank` of the training rows read
from the shards once per worker and held on its device (uint8 at the model's size: about
300 MiB for AFEW-VA's 25k faces at 64 px); validation pairs every validation row with a
fixed partner. Validation reports the encoder's V/A (RMSE, PCC, CCC, SAGR), the
reconstruction of each face at its own V/A (``reconstruction_mse``) and the rendering of
its partner from its appearance at the partner's V/A (``pair_mse``, the best checkpoint's
metric: what stage 2 relies on). At the end the best checkpoint renders the first
validation face over the paper's v x a grid: ``<run>/va_grid.png`` and a TensorBoard image.

``python -m ray_fer.train face_ae_regressor``: stage 2, the ResNet-34 V/A regressor, with
``options.balance`` (:class:`~ray_fer.methods.face_ae.steps.RegressOptions`): ``none``
(the original data), ``under`` / ``over`` (every V/A grid cell capped at / replicated up
to ``options.threshold`` rows, applied to the training stream itself) or ``rerender``
(each batch re-rendered by the frozen stage-1 autoencoder of ``options.ae_checkpoint`` at
V/A uniform in the unit disk).
Metric ``val_mean_ccc`` on the original validation faces, as CAF.
"""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn

from ray_fer.checkpoint import META_FILE, read_checkpoint
from ray_fer.config import Config, ConfigError, merged
from ray_fer.data.info import DataInfo
from ray_fer.methods.base import RunFigures, Sums, TrainState
from ray_fer.methods.face_ae.model import (
    FIGURE_AROUSALS,
    FIGURE_VALENCES,
    FaceAutoencoder,
    ae_loss,
    render_va_grid,
)
from ray_fer.methods.face_ae.rows import first_face, pair_bank, resampled
from ray_fer.methods.face_ae.steps import (
    FaceAeOptions,
    RegressOptions,
    ae_step,
    pair_batch,
    regression_step,
    rerendered_regression_step,
    resize,
    unit_range,
)
from ray_fer.methods.metrics import va_metrics_from_sums, va_sums
from ray_fer.methods.registry import build_network
from ray_fer.storage import resolve


def ae_options(cfg: Config) -> FaceAeOptions:
    """Stage 1's ``cfg.options`` as checked :class:`FaceAeOptions`."""
    return merged(FaceAeOptions(), cfg.options, "options.")


def regress_options(cfg: Config) -> RegressOptions:
    """Stage 2's ``cfg.options`` as checked :class:`RegressOptions`."""
    return merged(RegressOptions(), cfg.options, "options.")


def load_autoencoder(uri: str, endpoint: str | None) -> FaceAutoencoder:
    """The stage-1 autoencoder of checkpoint folder ``uri`` (local or s3://), frozen, in
    eval mode."""
    loaded = read_checkpoint(uri, endpoint)
    if loaded.cfg.method != "face_ae":
        raise ConfigError(f"config key 'options.ae_checkpoint': {uri} is a "
                          f"{loaded.cfg.method} checkpoint, not a stage-1 face_ae one")
    ae = build_network(loaded.cfg, loaded.info)
    loaded.restore({"model": ae})
    return ae.requires_grad_(False).eval()


def _random_seed() -> int:
    """A seed from torch's global generator, which the loop reseeds per (epoch, rank)."""
    return int(torch.randint(2**62, (1,)).item())


# ------------------------------------------------------------------ stage 1: autoencoder


def ae_modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    """The autoencoder, and the pair banks of the training and validation rows (rebuilt
    from the shards, never written into checkpoints)."""
    return {"model": build_network(cfg, info), "train_pairs": pair_bank(cfg, info, "train"),
            "val_pairs": pair_bank(cfg, info, "val")}


def ae_train(state: TrainState, batch: dict) -> Sums:
    """One L_AE step on the batch's rows that have a partner."""
    generator = torch.Generator(device=state.device).manual_seed(_random_seed())
    pairs = pair_batch(state.modules["train_pairs"], batch["image"], batch["row"], generator)
    if pairs is None:
        return {}
    with state.autocast():
        stats = ae_step(state.train_modules["model"], state.optimizers["model"], pairs,
                        ae_options(state.cfg))
    state.schedulers["model"].step()
    n = torch.full((), float(len(pairs["image_i"])), device=state.device)
    return {"loss_sum": stats["loss"] * n, "valence_se": stats["valence_mse"] * n,
            "arousal_se": stats["arousal_mse"] * n, "pair_se": stats["pair_mse"] * n,
            "pairs": n, "count": n}


def ae_eval(state: TrainState, batch: dict) -> Sums:
    """The encoder's V/A sums, own-V/A reconstruction and partner rendering errors."""
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


def ae_summarize(sums: Sums, prefix: str, info: DataInfo) -> dict[str, float]:
    """Pair and reconstruction errors, and the encoder's V/A metrics."""
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


def va_grid(cfg: Config, checkpoint: str) -> RunFigures:
    """The first validation face rendered over the paper's v x a grid by the autoencoder
    of ``checkpoint``: ``va_grid.png`` for the run folder, the bare mosaic for TensorBoard."""
    from ray_fer.reports.va_grid import va_grid_mosaic, va_grid_png

    ae = load_autoencoder(checkpoint, cfg.data.endpoint)
    face = first_face(cfg, DataInfo(class_names=[], image_size=ae.image_size,
                                    channels=ae.in_channels))
    grid = render_va_grid(ae, face)
    png = va_grid_png(face, grid, FIGURE_VALENCES, FIGURE_AROUSALS,
                      title=f"{cfg.run.name} · {checkpoint.rstrip('/').rsplit('/', 1)[-1]}: "
                            "one face over valence x arousal")
    return RunFigures(files={"va_grid.png": png}, images={"va_grid": va_grid_mosaic(grid)})


# ------------------------------------------------------------------ stage 2: regressor


def regress_modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    """The regressor, and for ``rerender`` the frozen stage-1 autoencoder (``ae``)."""
    options = regress_options(cfg)
    modules = {"model": build_network(cfg, info)}
    if options.balance == "rerender":
        ae = load_autoencoder(options.ae_checkpoint, cfg.data.endpoint)
        if ae.in_channels != info.channels:
            raise ConfigError(f"config key 'options.ae_checkpoint': its autoencoder renders "
                              f"{ae.in_channels} channel(s), the regressor reads "
                              f"{info.channels}; set data.channels to {ae.in_channels}")
        modules["ae"] = ae
    return modules


def regress_train(state: TrainState, batch: dict) -> Sums:
    """One L_VA step, on the faces or (``rerender``) on their re-renderings."""
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


def regress_check(cfg: Config) -> None:
    """ConfigError unless ``options.ae_checkpoint`` (when set) is a checkpoint folder."""
    options = regress_options(cfg)
    if options.ae_checkpoint:
        loc = resolve(options.ae_checkpoint, cfg.data.endpoint)
        if loc.fs.get_file_info(loc.join(META_FILE)).type != pafs.FileType.File:
            raise ConfigError(f"config key 'options.ae_checkpoint': {loc.uri} is not a "
                              "checkpoint folder (no meta.json); pass a stage-1 run's "
                              "best_checkpoint, e.g. runs/<name>/checkpoint_epoch-0009")


def regress_rows(cfg: Config, train):
    """Stage 2's training Dataset, resampled as ``options.balance`` says."""
    return resampled(cfg, regress_options(cfg), train)
