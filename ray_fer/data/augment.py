"""Training augmentation and Mixup/CutMix on a worker's device, and the input normalisation.

Everything here is torch and numpy on tensors already in memory: no Ray. The data stream
(:mod:`ray_fer.data.stream`) applies it to the batches it hands a worker; inference
(predict, explain) normalises faces with the same :func:`normalise`. The settings are the
run config's ``augment`` section (:class:`ray_fer.config.AugmentConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ray_fer.config import AugmentConfig


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for (seed, epoch, rank): independent streams per worker and epoch."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1]))


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


def denormalise(images: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalise`: float (N, C, H, W) → uint8 (N, H, W, C), rounded."""
    return images.add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


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
