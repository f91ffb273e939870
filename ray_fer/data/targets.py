"""Continuous targets: derived valence/arousal, the strong/weak emotion split, V/A sampling.

None of the datasets at hand carries measured valence/arousal (V/A). What they carry are
real human ratings over emotion categories; :func:`derived_va` maps such a rating
distribution to V/A through published per-category anchors. Everything it produces is
*derived* V/A, not measured V/A: manifests record :func:`derived_targets_note` and
reports must say so.

Anchors: Warriner, A. B., Kuperman, V. & Brysbaert, M. (2013). Norms of valence, arousal,
and dominance for 13,915 English lemmas. Behavior Research Methods 45(4), 1191-1207
(doi:10.3758/s13428-012-0314-x), columns ``V.Mean.Sum`` / ``A.Mean.Sum`` (mean ratings of
all raters on 1-9 scales) for the category words below. They are centred on the rating of
the word "neutral" and divided by 4 (half the scale's range), so a neutral face sits at
the origin, r = sqrt(v^2 + a^2) measures how far an expression is from neutral, and all
eight anchors fall inside [-1, 1]:

    v = (V - V_neutral) / 4,    a = (A - A_neutral) / 4.

Also here: Otsu's threshold on r (CAF's emotional binarization, with the official code's
cumulative-share variant), uniform sampling in the unit disk (the face-generating
autoencoder's stage 2) and the V/A-grid under-/over-sampling baselines of that paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

ANCHOR_SOURCE = (
    "Warriner, Kuperman & Brysbaert (2013), Norms of valence, arousal, and dominance for "
    "13,915 English lemmas, Behavior Research Methods 45(4):1191-1207, V.Mean.Sum/A.Mean.Sum "
    "of the category words, centred on 'neutral' and divided by 4"
)

#: Warriner et al. (2013) mean valence and arousal ratings (1-9) of each category word.
WARRINER_RATINGS: dict[str, tuple[float, float]] = {
    "neutral": (5.50, 3.45),
    "happiness": (8.48, 6.50),
    "surprise": (7.44, 6.57),
    "sadness": (2.40, 2.81),
    "anger": (2.50, 5.93),
    "disgust": (3.32, 5.00),
    "fear": (2.93, 6.14),
    "contempt": (3.22, 4.61),
}
_SCALE_HALF_RANGE = 4.0

#: Category → (valence, arousal) in [-1, 1], neutral at the origin (module docstring).
VA_ANCHORS: dict[str, tuple[float, float]] = {
    name: (
        (v - WARRINER_RATINGS["neutral"][0]) / _SCALE_HALF_RANGE,
        (a - WARRINER_RATINGS["neutral"][1]) / _SCALE_HALF_RANGE,
    )
    for name, (v, a) in WARRINER_RATINGS.items()
}

#: Class names used by the datasets' layouts → anchor names.
_ALIASES = {
    "neutral": "neutral", "calm": "neutral", "ne": "neutral",
    "happiness": "happiness", "happy": "happiness", "hap": "happiness", "ha": "happiness",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise", "su": "surprise",
    "sadness": "sadness", "sad": "sadness", "sa": "sadness",
    "anger": "anger", "angry": "anger", "ang": "anger", "an": "anger",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust", "di": "disgust",
    "fear": "fear", "fearful": "fear", "fea": "fear", "fe": "fear", "afraid": "fear",
    "contempt": "contempt", "contemptuous": "contempt",
}

#: FER+ vote columns that are not emotions (dropped before computing shares).
FERPLUS_NON_EMOTIONS = ("unknown", "nf")

#: JAFFE's semantic rating scale (1 = not at all ... 5 = very much).
JAFFE_RATING_RANGE = (1.0, 5.0)


def emotion_name(class_name: str) -> str:
    """The emotion a dataset's class name means, in one spelling for every dataset
    (``angry``, ``Anger`` and ``ang`` are ``anger``); a name that is no known emotion,
    lower-cased."""
    key = class_name.strip().lower()
    return _ALIASES.get(key, key)


def anchor_name(class_name: str) -> str:
    """The anchor of a dataset class name (case-insensitive); ValueError if it has none."""
    name = emotion_name(class_name)
    if name not in VA_ANCHORS:
        raise ValueError(
            f"class {class_name!r} has no valence/arousal anchor; known names: "
            f"{', '.join(sorted(_ALIASES))}"
        )
    return name


def anchor_matrix(class_names: Sequence[str]) -> np.ndarray:
    """(K, 2) anchors (valence, arousal) of ``class_names`` in order."""
    return np.array([VA_ANCHORS[anchor_name(c)] for c in class_names], dtype=np.float64)


def targets_label(targets: dict) -> str:
    """What reports print about a manifest's ``targets``: "derived V/A" or nothing."""
    return "derived V/A" if targets.get("valence_arousal") == "derived" else ""


def derived_targets_note() -> dict[str, object]:
    """What a manifest's ``targets`` records about V/A derived by this module."""
    return {
        "valence_arousal": "derived",
        "source": ANCHOR_SOURCE,
        "anchors": {name: [round(v, 4), round(a, 4)] for name, (v, a) in VA_ANCHORS.items()},
    }


def derived_va(
    shares: np.ndarray, class_names: Sequence[str], intensity: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Derived (valence, arousal) of N rating distributions over ``class_names``.

    ``shares`` (N, K): how the raters' judgements spread over the K categories (rows are
    normalised here; all-zero rows give NaN). The result is the expected anchor under
    that distribution, optionally scaled by ``intensity`` (N,) in [0, 1], the mean rated
    intensity as a fraction of its scale, which moves the point toward the neutral origin:

        (v, a) = intensity * sum_k share_k * anchor_k.

    Returns float32 arrays (N,), NaN where a row has no ratings.
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 2 or shares.shape[1] != len(class_names):
        raise ValueError(
            f"shares must be (N, {len(class_names)}) for classes {list(class_names)}, "
            f"got shape {shares.shape}"
        )
    if (shares < 0).any():
        raise ValueError("shares must be non-negative")
    totals = shares.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        va = (shares / totals) @ anchor_matrix(class_names)
    if intensity is not None:
        intensity = np.asarray(intensity, dtype=np.float64)
        if intensity.shape != (len(shares),):
            raise ValueError(f"intensity must be ({len(shares)},), got {intensity.shape}")
        va *= np.clip(intensity, 0.0, 1.0)[:, None]
    return va[:, 0].astype(np.float32), va[:, 1].astype(np.float32)


def ferplus_va(votes: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Derived V/A from FER+ votes (N, K) over ``class_names``, which may include FER+'s
    ``unknown`` and ``NF`` columns: those are dropped, the emotion votes become shares.
    Rows with no emotion votes give NaN."""
    keep = [i for i, c in enumerate(class_names) if c.strip().lower() not in FERPLUS_NON_EMOTIONS]
    votes = np.asarray(votes, dtype=np.float64)
    return derived_va(votes[:, keep], [class_names[i] for i in keep])


def taiwanese_va(
    shares: np.ndarray,
    intensities: np.ndarray,
    class_names: Sequence[str],
    intensity_max: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Derived V/A from the Taiwanese set's observer shares and mean intensities.

    ``shares`` (N, 6): fraction of observers choosing each emotion; ``intensities`` (N, 6):
    mean rated intensity of each emotion. The observers could only choose among six
    emotions, so calm faces are recognised by their low intensity: the distance from
    neutral is scaled by the share-weighted mean intensity over the scale's maximum
    (``intensity_max``; the set's 0-10 self-evaluation scale),

        intensity = clip(sum_k share_k * intensity_k / intensity_max, 0, 1).
    """
    shares = np.asarray(shares, dtype=np.float64)
    intensities = np.asarray(intensities, dtype=np.float64)
    if intensities.shape != shares.shape:
        raise ValueError(f"intensities {intensities.shape} must match shares {shares.shape}")
    totals = shares.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_intensity = (shares * intensities).sum(axis=1) / totals
    return derived_va(shares, class_names, intensity=mean_intensity / intensity_max)


def jaffe_va(ratings: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Derived V/A from JAFFE's mean semantic ratings (N, 6) on its 1-5 scale.

    Each rating minus 1, over 4, is that emotion's strength s_k in [0, 1]. The shares are
    the strengths normalised (share_k = s_k / sum_j s_j) and the intensity is their
    share-weighted mean (sum_k share_k * s_k), as for the Taiwanese set; a neutral face,
    rated low on everything, lands near the origin.
    """
    low, high = JAFFE_RATING_RANGE
    strength = (np.clip(np.asarray(ratings, dtype=np.float64), low, high) - low) / (high - low)
    totals = strength.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        intensity = (strength**2).sum(axis=1) / totals
    return derived_va(strength, class_names, intensity=intensity)


def emotion_intensity(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """r = sqrt(v^2 + a^2), the distance from neutral."""
    return np.hypot(np.asarray(valence, dtype=np.float64), np.asarray(arousal, dtype=np.float64))


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite values: rows without valence/arousal cannot be split")
    return values


def otsu_threshold(values: np.ndarray, bins: int | None = 256) -> float:
    """Otsu's threshold: the t maximising the between-class variance
    w0(t) * w1(t) * (mu0(t) - mu1(t))^2 of the split {x < t}, {x >= t}.

    ``bins`` > 1: the classic histogram form (``bins`` equal bins over [min, max], class
    means from bin centres, t at a bin edge). ``bins=None``: exact, over every cut between
    consecutive distinct sorted values (t at the midpoint). Non-finite values are ignored;
    constant input returns that value (no cut exists; everything is then "strong").
    """
    x = _finite(values)
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        return lo
    if bins is None:
        x = np.sort(x)
        cut_values, cut_at = x, np.nonzero(np.diff(x) > 0)[0]
        counts = np.ones_like(x)
        candidates = (x[cut_at] + x[cut_at + 1]) / 2
    else:
        if bins < 2:
            raise ValueError(f"bins must be >= 2 or None, got {bins}")
        counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
        cut_values = (edges[:-1] + edges[1:]) / 2
        cut_at = np.arange(bins - 1)
        candidates = edges[1:-1]
    n = counts.sum()
    w0 = np.cumsum(counts)[cut_at] / n
    sum0 = np.cumsum(counts * cut_values)[cut_at]
    total = (counts * cut_values).sum()
    w1 = 1.0 - w0
    with np.errstate(invalid="ignore", divide="ignore"):
        mu0 = sum0 / (w0 * n)
        mu1 = (total - sum0) / (w1 * n)
        between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    return float(candidates[int(np.argmax(between))])


SplitMethod = Literal["otsu", "cumulative"]


def emotion_threshold(
    valence: np.ndarray,
    arousal: np.ndarray,
    method: SplitMethod = "otsu",
    *,
    weak_share: float = 0.75,
    bins: int | None = 256,
) -> float:
    """The intensity threshold delta_r of CAF's emotional binarization, from training rows.

    ``"otsu"`` (the paper): Otsu's threshold on r. ``"cumulative"`` (the authors' code
    thresholds at a point of the cumulative distribution instead, with 0.75 as its first
    share): delta_r is the ``weak_share`` quantile of r, so that share of the rows is weak.
    """
    r = _finite(emotion_intensity(valence, arousal))
    if method == "otsu":
        return otsu_threshold(r, bins=bins)
    if method == "cumulative":
        if not 0.0 < weak_share < 1.0:
            raise ValueError(f"weak_share must be in (0, 1), got {weak_share}")
        return float(np.quantile(r, weak_share))
    raise ValueError(f"unknown split method {method!r}; choose 'otsu' or 'cumulative'")


def binarize_emotion(
    valence: np.ndarray,
    arousal: np.ndarray,
    method: SplitMethod = "otsu",
    *,
    threshold: float | None = None,
    weak_share: float = 0.75,
    bins: int | None = 256,
) -> np.ndarray:
    """Boolean mask of strong-emotion rows (r >= delta_r); the rest are weak.

    delta_r is ``threshold`` when given (e.g. computed once on the training set), else
    :func:`emotion_threshold` of these rows. Rows with NaN V/A are neither (False).
    """
    if threshold is None:
        threshold = emotion_threshold(valence, arousal, method, weak_share=weak_share, bins=bins)
    r = emotion_intensity(valence, arousal)
    with np.errstate(invalid="ignore"):
        return r >= threshold


def sample_unit_disk(
    n: int, rng: np.random.Generator, radius: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """n points (v, a) uniform in the disk of ``radius``: r = radius * sqrt(U), theta
    uniform. (r = radius * U would crowd the centre: the area within r grows as r^2.)"""
    r = radius * np.sqrt(rng.uniform(0.0, 1.0, n))
    theta = rng.uniform(0.0, 2 * np.pi, n)
    return (r * np.cos(theta)).astype(np.float32), (r * np.sin(theta)).astype(np.float32)


def va_grid_groups(valence: np.ndarray, arousal: np.ndarray, cells_per_axis: int) -> np.ndarray:
    """Group id of each row on a ``cells_per_axis`` x ``cells_per_axis`` grid over
    [-1, 1]^2 (values outside are clipped onto the border cells): id = row * cells + col,
    with the row from arousal and the column from valence."""
    if cells_per_axis < 1:
        raise ValueError(f"cells_per_axis must be >= 1, got {cells_per_axis}")

    def cell(x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
        return np.minimum(((x + 1.0) / 2.0 * cells_per_axis).astype(np.int64), cells_per_axis - 1)

    return cell(arousal) * cells_per_axis + cell(valence)


def undersample_indices(groups: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Row indices keeping at most ``cap`` random rows of each group (Kim, Park & Chang's T_u)."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    kept = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        kept.append(rng.choice(rows, cap, replace=False) if len(rows) > cap else rows)
    return np.sort(np.concatenate(kept))


def oversample_indices(groups: np.ndarray, target: int, seed: int) -> np.ndarray:
    """Row indices replicating each group smaller than ``target`` up to ``target`` rows
    (Kim, Park & Chang's T_o): whole copies, then a random subset for the remainder; larger
    groups are kept as they are."""
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    kept = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) < target:
            copies, remainder = divmod(target, len(rows))
            rows = np.concatenate([np.tile(rows, copies), rng.choice(rows, remainder, False)])
        kept.append(rows)
    return np.sort(np.concatenate(kept))
