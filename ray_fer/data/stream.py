"""Per-epoch training views, augmentation and per-worker batch iteration for Ray Train.

Flow: :func:`open_split` (from :mod:`ray_fer.data.shard_source`) reads a shard prefix
into a Ray Dataset of decoded columns (for training, in a seeded new block order each
epoch); :func:`apply_data_augmentation` adds CPU-side augmentation when asked; the
trainer splits datasets across workers with :func:`data_config` (no row dropped); each
Ray Train worker iterates its shard with :func:`iter_train_batches` /
:func:`iter_eval_batches`, which hand over uint8 pixels (4x fewer bytes than float),
pinned and non-blocking, then normalise and augment on the worker's device. After the
first epoch a worker may serve its rows from a :class:`DeviceCache` instead
(:mod:`ray_fer.data.device_cache`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.train
import torch
import torch.nn.functional as F
from ray.data.collate_fn import ArrowBatchCollateFn

from ray_fer.data.device_cache import CacheRecorder, DeviceCache
from ray_fer.data.shard_source import (
    BLOCK_BYTES,
    DECODED_COLUMNS,
    PASSTHROUGH_COLUMNS,
    ROW_ID_STRIDE,
    open_split,
)

__all__ = [
    "BLOCK_BYTES", "DECODED_COLUMNS", "PASSTHROUGH_COLUMNS", "ROW_ID_STRIDE", "AugmentConfig",
    "CUTMIX_SHARE", "Mix", "apply_mix", "augment_batch", "class_distribution", "data_config",
    "draw_mix", "epoch_seed", "fetching_first", "iter_eval_batches", "iter_train_batches",
    "mix_rng", "normalise", "open_split", "apply_data_augmentation", "read_in_order",
]

T = TypeVar("T")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (all of it configurable from YAML; defaults suit 48 px faces).

    ``where="worker"`` runs :func:`augment_batch` in the train worker on its device, seeded
    from (seed, epoch, rank), so a fixed seed reproduces every batch; ``where="data"`` runs
    it on Ray Data's CPU workers (:func:`apply_data_augmentation`), unseeded.

    ``mixup_alpha`` / ``cutmix_alpha`` > 0 turn on Mixup / CutMix of whole training batches
    (:func:`draw_mix`), a share ``mix_prob`` of them; with both on, each mixed batch uses
    one of the two at even odds, as timm does. Mixing needs the labels, so it runs in
    :func:`iter_train_batches` and only with ``where="worker"``.
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


# ----------------------------------------------------------------------- augmentation


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device
             ) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _affine(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = images.shape
    dev = images.device
    angle = torch.deg2rad(_uniform(n, -cfg.max_rotate_deg, cfg.max_rotate_deg, g, dev))
    scale = _uniform(n, cfg.scale[0], cfg.scale[1], g, dev)
    # Normalised coordinates span 2 per image side: a shift of f * size is 2f.
    tx = _uniform(n, -cfg.max_translate, cfg.max_translate, g, dev) * 2
    ty = _uniform(n, -cfg.max_translate, cfg.max_translate, g, dev) * 2
    if cfg.crop_padding:
        p = cfg.crop_padding
        tx = tx + torch.randint(-p, p + 1, (n,), generator=g, device=dev) * (2.0 / w)
        ty = ty + torch.randint(-p, p + 1, (n,), generator=g, device=dev) * (2.0 / h)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output to input coordinates: rotate by -angle, zoom by 1/scale, shift.
    theta = torch.stack([torch.stack([cos, sin, tx], 1), torch.stack([-sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _erase(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = images.shape
    dev = images.device
    apply = torch.rand(n, generator=g, device=dev) < cfg.erasing_p
    area = _uniform(n, cfg.erasing_area[0], cfg.erasing_area[1], g, dev) * (h * w)
    # Aspect ratio log-uniform in [0.3, 1/0.3] as in Zhong et al. (2020).
    ratio = torch.exp(_uniform(n, math.log(0.3), math.log(1 / 0.3), g, dev))
    eh = torch.sqrt(area * ratio).round().clamp(1, h)
    ew = torch.sqrt(area / ratio).round().clamp(1, w)
    y0 = (torch.rand(n, generator=g, device=dev) * (h - eh + 1)).floor()
    x0 = (torch.rand(n, generator=g, device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]
    # Random values over the normalised pixel range, as the paper fills with random pixels.
    noise = torch.rand(images.shape, generator=g, device=dev, dtype=images.dtype) * 2 - 1
    return torch.where(mask, noise, images)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
                  ) -> torch.Tensor:
    """Augment normalised float images (N, C, H, W) on their device; same shape out.

    Per image: a horizontal flip (exact, by indexing), then one ``affine_grid`` /
    ``grid_sample`` for rotation, translation, scale and padded random crop (areas
    outside the source are 0, mid-gray after normalisation), then random erasing with
    uniform noise in [-1, 1]. Every random draw comes from ``generator`` (which must live
    on the images' device) in a fixed order, so a seed reproduces the batch exactly.
    """
    if not cfg.enabled:
        return images
    n = images.shape[0]
    if cfg.hflip:
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if cfg.geometric:
        images = _affine(images, cfg, generator)
    if cfg.erasing_p > 0:
        images = _erase(images, cfg, generator)
    return images


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) → float (N, C, H, W) in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    return images.permute(0, 3, 1, 2).float().mul_(2 / 255).sub_(1)


def _denormalise(images: torch.Tensor) -> torch.Tensor:
    return images.add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _augment_on_cpu(batch: dict[str, np.ndarray], cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Ray Data UDF for ``where="data"``: augments the uint8 images of a numpy batch."""
    g = torch.Generator()
    g.seed()  # unseeded on purpose: Ray Data does not tell a UDF which epoch it serves
    images = normalise(torch.from_numpy(batch["image"]))
    batch["image"] = _denormalise(augment_batch(images, cfg, g)).contiguous().numpy()
    return batch


def apply_data_augmentation(ds: ray.data.Dataset, augment: AugmentConfig) -> ray.data.Dataset:
    """``ds`` with augmentation on Ray Data's CPU workers when ``augment.where == "data"``.

    Otherwise ``ds`` itself (``"worker"`` placement augments in :func:`iter_train_batches`).
    Images stay uint8 (augmented, then re-quantised) so transfers stay small. Unseeded:
    Ray Data does not tell a UDF which epoch it serves, so this placement is not
    reproducible; ``"worker"`` is.
    """
    if not (augment.enabled and augment.where == "data"):
        return ds
    return ds.map_batches(_augment_on_cpu, fn_kwargs={"cfg": augment}, batch_format="numpy",
                          batch_size=None)


# ------------------------------------------------------------------------------ mixing

#: Odds of CutMix rather than Mixup for a mixed batch when both are on (timm's switch_prob).
CUTMIX_SHARE = 0.5


@dataclass(frozen=True)
class Mix:
    """How one batch is mixed: row i with row ``perm[i]``, which weighs ``1 - lam``.

    Mixup blends whole images; CutMix (``box`` = rows y0:y1, columns x0:x1) pastes the
    box of the partner image, and ``lam`` is then the share of pixels outside the box.
    """

    lam: float
    perm: torch.Tensor
    box: tuple[int, int, int, int] | None = None


def class_distribution(labels: torch.Tensor, soft: torch.Tensor | None, num_classes: int
                       ) -> torch.Tensor:
    """(N, K) float target distributions: each row's ``soft`` label (vote shares)
    normalised to sum to 1, or the one-hot of its label where ``soft`` is None or the
    row's is unusable (non-finite or summing to 0)."""
    hard = F.one_hot(labels, num_classes).float()
    if soft is None:
        return hard
    soft = soft.float()
    total = soft.sum(dim=1, keepdim=True)
    valid = torch.isfinite(total) & (total > 0)
    return torch.where(valid, torch.nan_to_num(soft) / total.clamp_min(1e-12), hard)


def mix_rng(generator: torch.Generator) -> np.random.Generator:
    """The host RNG of an epoch's mixing scalars, seeded by one draw from ``generator``.

    torch's Beta sampler takes no generator; numpy's ``beta`` is exact and deterministic
    for a seed. Drawing the scalars (mix or not, Mixup or CutMix, lam, the box) on the
    host keeps batches free of host-device syncs: this seed is the epoch's only one.
    """
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed))


def _cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator
                ) -> tuple[int, int, int, int]:
    """A box of (1 - lam) of the image, centred uniformly and clipped to the image (timm's
    ``rand_bbox``), as (y0, y1, x0, x1)."""
    side = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * side), int(width * side)
    top = int(rng.integers(height)) - cut_h // 2
    left = int(rng.integers(width)) - cut_w // 2
    return (max(top, 0), min(top + cut_h, height), max(left, 0), min(left + cut_w, width))


def draw_mix(n: int, height: int, width: int, cfg: AugmentConfig, generator: torch.Generator,
             rng: np.random.Generator) -> Mix | None:
    """This batch's :class:`Mix`, or None when it stays unmixed (odds ``1 - mix_prob``).

    One lam ~ Beta(alpha, alpha) per batch (timm's batch mode). Scalars come from ``rng``
    (:func:`mix_rng`), the permutation from ``generator`` (on the images' device), both in
    a fixed order, so a seed reproduces the batch.
    """
    if rng.random() >= cfg.mix_prob:
        return None
    cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha == 0 or rng.random() < CUTMIX_SHARE)
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(n, generator=generator, device=generator.device)
    if not cutmix:
        return Mix(lam, perm)
    box = _cutmix_box(lam, height, width, rng)
    # The clipped box may be smaller than drawn: lam is the share the images really keep.
    area = (box[1] - box[0]) * (box[3] - box[2])
    return Mix(1 - area / (height * width), perm, box)


def apply_mix(images: torch.Tensor, targets: torch.Tensor, mix: Mix | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (N, C, H, W) and ``targets`` (N, K) mixed by ``mix`` (as they are for
    None): targets become ``lam * t + (1 - lam) * t[perm]``."""
    if mix is None:
        return images, targets
    other = images.index_select(0, mix.perm)
    if mix.box is None:
        images = images * mix.lam + other * (1 - mix.lam)
    else:
        y0, y1, x0, x1 = mix.box
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return images, targets * mix.lam + targets.index_select(0, mix.perm) * (1 - mix.lam)


# -------------------------------------------------------------------------- iteration


def tensor_columns(batch: pa.Table) -> dict[str, torch.Tensor]:
    """The numeric columns of ``batch`` (decoded rows, e.g. from :func:`open_split`) as
    writable CPU tensors; uint8 pixels stay uint8, string columns are left out."""
    out = {}
    for name in batch.column_names:
        col = batch[name]
        array = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        values = (array.to_numpy() if isinstance(array, pa.ExtensionArray)
                  else array.to_numpy(zero_copy_only=False))
        if values.dtype == object:
            continue  # strings (passthrough columns) have no tensor form
        # Arrow memory is read-only; a copy (microseconds per batch) gives tensors
        # that callers may safely modify in place.
        writable = values.flags.writeable and values.flags.c_contiguous
        out[name] = torch.from_numpy(values if writable else np.array(values, order="C"))
    return out


class _TensorCollate(ArrowBatchCollateFn):
    """Arrow batch → dict of CPU tensors (:func:`tensor_columns`) in Ray's collate threads."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return tensor_columns(batch)


def _world_rank() -> int:
    try:
        return ray.train.get_context().get_world_rank()
    except RuntimeError:  # outside a Ray Train worker (tests, benchmarks): one process
        return 0


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for (seed, epoch, rank): independent streams per worker and epoch."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _tensor_batches(shard: ray.data.DataIterator | ray.data.Dataset, *, batch_size: int,
                    device: torch.device, shuffle_buffer: int,
                    shuffle_seed: int | None, prefetch_batches: int
                    ) -> Iterable[dict[str, torch.Tensor]]:
    device = torch.device(device)
    return shard.iter_torch_batches(
        batch_size=batch_size, collate_fn=_TensorCollate(), device=device,
        pin_memory=device.type == "cuda", drop_last=False,
        prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=max(shuffle_buffer, batch_size) if shuffle_buffer else None,
        local_shuffle_seed=shuffle_seed if shuffle_buffer else None,
    )


def fetching_first(items: Iterator[T]) -> Iterator[T]:
    """``items``, its first item being fetched from now on in a daemon thread.

    Lets a new worker start its data pipeline (Ray Data schedules read tasks, fills the
    shuffle buffer) while it builds its model. The rest of ``items`` is read by the
    caller, after the first item; an error of the first fetch is raised there.
    """
    first: Future = Future()
    end = object()

    def fetch() -> None:
        try:
            first.set_result(next(items, end))
        except BaseException as exc:  # re-raised in the caller's thread by result()
            first.set_exception(exc)

    threading.Thread(target=fetch, name="ray_fer-first-batch", daemon=True).start()

    def rest() -> Iterator[T]:
        item = first.result()
        if item is end:
            return
        yield item
        yield from items

    return rest()


def _finish(batch: dict[str, torch.Tensor], images: torch.Tensor, channels_last: bool
            ) -> dict[str, torch.Tensor]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch["image"] = images.contiguous(memory_format=layout)
    return batch


#: What the iterators read: a worker's Ray Data shard, a Dataset, or its cached rows.
Source = ray.data.DataIterator | ray.data.Dataset | DeviceCache


def iter_train_batches(source: Source, *, batch_size: int,
                       device: torch.device, augment: AugmentConfig, seed: int, epoch: int,
                       channels_last: bool = False, drop_last: bool = False,
                       shuffle_buffer: int = 0, prefetch_batches: int = 4,
                       rank: int | None = None, recorder: CacheRecorder | None = None,
                       num_classes: int | None = None, soft_labels: bool = False
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of training batches from ``source`` on ``device``.

    ``source`` is ``ray.train.get_dataset_shard(name)``, a Dataset or a
    :class:`DeviceCache`. Yields ``image`` float (N, C, H, W) in [-1, 1] (augmented when
    ``augment.where == "worker"``), and ``label``, ``soft_label``, ``valence``,
    ``arousal``, ``row`` as they are in the dataset. From Ray Data, batches are collated
    from Arrow in Ray's prefetch threads, copied to ``device`` from pinned memory without
    blocking, and normalised there; ``shuffle_buffer`` > 0 mixes rows in a buffer of that
    many rows, and ``recorder`` keeps every row read (also those of a last partial batch
    that ``drop_last`` skips) for a cache. From a cache, rows come in a full permutation.
    Shuffle and augmentation draw from seeds of (``seed``, ``epoch``, ``rank`` (default:
    this worker's world rank)), so with a fixed input order the batches are identical run
    to run.

    When ``augment.mixing``, every batch also carries ``mix_target`` (N, ``num_classes``)
    float: its rows' target distributions (one-hot of ``label``, or ``soft_label`` with
    ``soft_labels``) mixed as its images are, unmixed (lam = 1) for a batch left as it is,
    so that compiled steps always see the same keys. ``label`` stays the row's own.
    """
    if augment.mixing and num_classes is None:
        raise ValueError("iter_train_batches: mixing (augment.mixup_alpha/cutmix_alpha) "
                         "needs num_classes")
    device = torch.device(device)
    rank = _world_rank() if rank is None else rank
    worker_seed = epoch_seed(seed, epoch, rank)
    generator = torch.Generator(device=device)
    generator.manual_seed(worker_seed)
    on_worker = augment.enabled and augment.where == "worker"
    rng = mix_rng(generator) if augment.mixing else None
    if isinstance(source, DeviceCache):
        raw = source.batches(batch_size, drop_last=drop_last, generator=generator)
    else:
        raw = _tensor_batches(source, batch_size=batch_size, device=device,
                              shuffle_buffer=shuffle_buffer, shuffle_seed=worker_seed % 2**32,
                              prefetch_batches=prefetch_batches)
        raw = recorder.record(raw) if recorder is not None else raw
    for batch in raw:
        if drop_last and len(batch["image"]) < batch_size:
            continue  # the last partial batch (kept by the recorder, never trained on)
        images = normalise(batch["image"])
        if on_worker:
            images = augment_batch(images, augment, generator)
        if rng is not None:
            soft = batch.get("soft_label") if soft_labels else None
            targets = class_distribution(batch["label"], soft, num_classes)
            mix = draw_mix(len(images), images.shape[-2], images.shape[-1], augment,
                           generator, rng)
            images, batch["mix_target"] = apply_mix(images, targets, mix)
        yield _finish(batch, images, channels_last)


def iter_eval_batches(source: Source, *, batch_size: int,
                      device: torch.device, channels_last: bool = False,
                      prefetch_batches: int = 4, recorder: CacheRecorder | None = None
                      ) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches from ``source``: like :func:`iter_train_batches`, no augmentation,
    no shuffling, every row (no ``drop_last``)."""
    if isinstance(source, DeviceCache):
        raw = source.batches(batch_size, drop_last=False)
    else:
        raw = _tensor_batches(source, batch_size=batch_size, device=device,
                              shuffle_buffer=0, shuffle_seed=None,
                              prefetch_batches=prefetch_batches)
        raw = recorder.record(raw) if recorder is not None else raw
    for batch in raw:
        yield _finish(batch, normalise(batch["image"]), channels_last)


# ------------------------------------------------------------------- worker splitting


class FullCoverageDataConfig(ray.train.DataConfig):
    """Ray Train's DataConfig, but splitting with ``streaming_split(equal=False)``.

    Ray 2.60's ``DataConfig.configure`` calls ``streaming_split(n, equal=True)``, which
    drops rows (up to ``n - 1`` per epoch) to give every worker exactly as many rows.
    Here no row is dropped: each worker receives whole blocks, greedily to the worker
    with the fewest rows so far, so shares differ by at most about one block.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        split_names = (set(datasets) if self._datasets_to_split == "all"
                       else set(self._datasets_to_split))
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            if name in split_names:
                for i, it in enumerate(ds.streaming_split(world_size, equal=False,
                                                          locality_hints=hints)):
                    output[i][name] = it
            else:
                for i in range(world_size):
                    output[i][name] = ds.iterator()
        return output


def read_in_order(ds: ray.data.Dataset) -> ray.data.Dataset:
    """``ds`` emitting its blocks in order, as :func:`data_config` has Ray Train read them,
    for one process that iterates it directly (a one-worker Tune trial)."""
    ds.context.execution_options.preserve_order = True
    return ds


def data_config(*, datasets_to_split: Sequence[str] | str = "all",
                preserve_order: bool = True) -> ray.train.DataConfig:
    """How the trainer splits datasets across workers: disjoint, complete, no row dropped.

    Each worker's ``get_dataset_shard(name)`` yields a disjoint part of the dataset, and
    together the workers see every row exactly once per epoch, for ``train`` and ``val``
    alike. Consequence for DDP: workers may get a different number of rows, hence of
    batches (at most about one block, :data:`BLOCK_BYTES`, apart), so the training loop
    must not assume equal step counts: wrap the epoch in
    ``torch.distributed.algorithms.Join([model])`` (DDP supports it) or all-reduce the
    step count and stop collectives together; evaluation must all-reduce sums (correct,
    count), never average per-worker means. ``open_split(min_blocks=...)`` cuts a small
    split into enough blocks for each worker to get rows; with more workers than blocks,
    some get none. Every worker must still iterate every split it was given
    once per epoch (to the end or not at all, like the others): an epoch of a split starts
    only when all workers ask for it. On a small node, give the train workers fewer CPUs
    than the node has (e.g. ``resources_per_worker={"CPU": 0.5}`` on 2 CPUs), else Ray
    Data's read tasks get none and training waits forever.

    ``preserve_order=True`` (default) makes Ray Data emit blocks in order and disables
    locality-based dispatch, so which rows each worker gets, and in which order, is the
    same run to run for a fixed number of workers (with ``open_split(shuffle_seed=...)``
    and the seeded ``shuffle_buffer``, batches are reproducible). Set it to False
    for throughput on multi-node clusters; then coverage still holds, the assignment
    does not.
    """
    from ray.data import ExecutionOptions

    to_split = "all" if datasets_to_split == "all" else list(datasets_to_split)
    base = ray.data.DataContext.get_current().execution_options
    options = ExecutionOptions(resource_limits=base.resource_limits,
                               exclude_resources=base.exclude_resources,
                               preserve_order=preserve_order)
    return FullCoverageDataConfig(datasets_to_split=to_split, execution_options=options)
