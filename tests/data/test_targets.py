"""Derived V/A, Otsu's threshold, unit-disk sampling and V/A-grid resampling."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ray_fer.data import targets as T

FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF"]
JAFFE_COLUMNS = ["HAP", "SAD", "SUR", "ANG", "DIS", "FEA"]
TAIWANESE_COLUMNS = ["happy", "sad", "angry", "disgusted", "fearful", "surprised"]


def test_anchors_are_warriner_ratings_centred_on_neutral_and_halved_to_unit_range():
    assert T.VA_ANCHORS["neutral"] == (0.0, 0.0)
    # happiness: V 8.48, A 6.50; neutral: V 5.50, A 3.45 (Warriner et al. 2013)
    assert T.VA_ANCHORS["happiness"] == pytest.approx((0.745, 0.7625))
    assert T.VA_ANCHORS["sadness"] == pytest.approx((-0.775, -0.16))
    assert all(-1 <= v <= 1 and -1 <= a <= 1 for v, a in T.VA_ANCHORS.values())


def test_dataset_class_names_resolve_to_anchors_and_unknown_names_fail_clearly():
    for names in (FERPLUS_COLUMNS[:8], JAFFE_COLUMNS, TAIWANESE_COLUMNS,
                  ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]):
        assert T.anchor_matrix(names).shape == (len(names), 2)
    with pytest.raises(ValueError, match="'unknown' has no valence/arousal anchor"):
        T.anchor_name("unknown")


def test_derived_va_is_the_expected_anchor_scaled_by_intensity():
    shares = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    v, a = T.derived_va(shares, ["neutral", "happy"])
    assert v[:2] == pytest.approx([0.0, 0.3725])
    assert a[:2] == pytest.approx([0.0, 0.38125])
    assert np.isnan(v[2]) and np.isnan(a[2])
    v, a = T.derived_va(shares[:2], ["neutral", "happy"], intensity=np.array([1.0, 0.5]))
    assert v == pytest.approx([0.0, 0.18625])
    with pytest.raises(ValueError, match=r"shares must be \(N, 3\)"):
        T.derived_va(shares, ["neutral", "happy", "sad"])


def test_ferplus_votes_drop_unknown_and_nf_and_become_shares():
    votes = np.array([[4, 0, 0, 1, 3, 2, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 0, 0, 7, 3]])
    v, a = T.ferplus_va(votes, FERPLUS_COLUMNS)
    # (4*neutral + 1*sadness + 3*anger + 2*disgust) / 10, anchors by hand
    assert v[0] == pytest.approx((-0.775 - 3 * 0.75 - 2 * 0.545) / 10, abs=1e-6)
    assert a[0] == pytest.approx((-0.16 + 3 * 0.62 + 2 * 0.3875) / 10, abs=1e-6)
    assert np.isnan(v[1]) and np.isnan(a[1])


def test_taiwanese_mean_intensity_scales_distance_from_neutral():
    shares = np.array([[1.0, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]])
    intensities = np.array([[5.0, 0, 0, 0, 0, 0], [10.0, 1, 1, 1, 1, 1]])
    v, a = T.taiwanese_va(shares, intensities, TAIWANESE_COLUMNS)
    assert v == pytest.approx([0.3725, 0.745])
    assert a == pytest.approx([0.38125, 0.7625])


def test_jaffe_ratings_minus_one_over_four_give_shares_and_intensity():
    ratings = np.array([[5.0, 1, 1, 1, 1, 1], [3.0, 3, 1, 1, 1, 1]])
    v, a = T.jaffe_va(ratings, JAFFE_COLUMNS)
    # row 2: strengths (0.5, 0.5) -> shares (0.5, 0.5), intensity 0.25 + 0.25 = 0.5
    assert v == pytest.approx([0.745, 0.5 * (0.5 * 0.745 - 0.5 * 0.775)], abs=1e-6)
    assert a == pytest.approx([0.7625, 0.5 * (0.5 * 0.7625 - 0.5 * 0.16)], abs=1e-6)


def test_derived_targets_note_marks_derived_and_cites_anchors():
    note = T.derived_targets_note()
    assert note["valence_arousal"] == "derived"
    assert "Warriner" in note["source"] and "Behavior Research Methods" in note["source"]
    assert note["anchors"]["neutral"] == [0.0, 0.0]


def brute_force_otsu(values: np.ndarray) -> tuple[float, float]:
    """Every cut between distinct sorted values, between-class variance from raw means."""
    x = np.sort(values)
    best_t, best = None, -1.0
    for lo, hi in zip(x[:-1], x[1:], strict=True):
        if lo == hi:
            continue
        t = (lo + hi) / 2
        below, above = x[x < t], x[x >= t]
        w0, w1 = len(below) / len(x), len(above) / len(x)
        between = w0 * w1 * (below.mean() - above.mean()) ** 2
        if between > best:
            best_t, best = t, between
    return best_t, best


def between_class_variance(values: np.ndarray, t: float) -> float:
    below, above = values[values < t], values[values >= t]
    return len(below) * len(above) / len(values) ** 2 * (below.mean() - above.mean()) ** 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_brute_force_on_random_bimodal_data(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.2, 0.05, 300 + 100 * seed),
                             rng.normal(0.7, 0.08, 200)])
    t_brute, best = brute_force_otsu(values)
    assert T.otsu_threshold(values, bins=None) == pytest.approx(t_brute)
    t_hist = T.otsu_threshold(values, bins=256)
    assert between_class_variance(values, t_hist) >= 0.999 * best
    assert np.mean((values >= t_hist) != (values >= t_brute)) < 0.01


def test_otsu_small_cases_by_hand():
    assert T.otsu_threshold(np.array([0.0, 1, 2, 10, 11, 12]), bins=None) == 6.0
    assert T.otsu_threshold(np.array([0.3, 0.3, np.nan]), bins=None) == 0.3
    with pytest.raises(ValueError, match="no finite values"):
        T.otsu_threshold(np.array([np.nan]))


def test_binarize_splits_on_intensity_by_otsu_cumulative_or_given_threshold():
    rng = np.random.default_rng(0)
    radius = np.concatenate([rng.uniform(0.05, 0.2, 200), rng.uniform(0.6, 0.9, 100)])
    angle = rng.uniform(0, 2 * np.pi, 300)
    v, a = radius * np.cos(angle), radius * np.sin(angle)
    strong = T.binarize_emotion(v, a, "otsu")
    assert (strong == (radius > 0.4)).all()
    delta = T.emotion_threshold(v, a, "cumulative", weak_share=0.5)
    assert delta == pytest.approx(np.median(radius))
    assert T.binarize_emotion(v, a, "cumulative", weak_share=0.5).sum() == 150
    given = T.binarize_emotion(np.array([0.3, 0.0, np.nan]), np.array([0.4, 0.1, 0.0]),
                               threshold=0.5)
    assert given.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="unknown split method"):
        T.emotion_threshold(v, a, "mean")


def ks_statistic(samples: np.ndarray, cdf) -> float:
    x = np.sort(samples)
    n = len(x)
    f = cdf(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def test_unit_disk_sampling_is_uniform_in_area():
    n = 20000
    v, a = T.sample_unit_disk(n, np.random.default_rng(123))
    r, theta = np.hypot(v, a), np.mod(np.arctan2(a, v), 2 * np.pi)
    assert r.max() <= 1.0
    critical = 1.95 / np.sqrt(n)  # Kolmogorov-Smirnov, alpha = 0.001
    assert ks_statistic(r, lambda x: x**2) < critical  # area within r is pi r^2
    assert ks_statistic(theta, lambda x: x / (2 * np.pi)) < critical
    # the same check rejects the naive r = U sampling, which crowds the centre
    naive_r = np.random.default_rng(123).uniform(0, 1, n)
    assert ks_statistic(naive_r, lambda x: x**2) > 10 * critical


def test_va_grid_groups_by_hand():
    v = np.array([-0.5, 0.5, -0.5, 0.5, 1.0, -1.0, 2.0])
    a = np.array([-0.5, -0.5, 0.5, 0.5, 1.0, -1.0, 0.1])
    assert T.va_grid_groups(v, a, 2).tolist() == [0, 1, 2, 3, 3, 0, 3]


def test_undersampling_caps_each_group():
    groups = np.array([0] * 10 + [1] * 3)
    rows = T.undersample_indices(groups, cap=5, seed=0)
    assert len(np.unique(rows)) == len(rows) == 8
    assert (groups[rows] == 0).sum() == 5 and (groups[rows] == 1).sum() == 3
    assert (rows == T.undersample_indices(groups, cap=5, seed=0)).all()


def test_oversampling_replicates_small_groups_up_to_target():
    groups = np.array([0] * 10 + [1] * 3)
    rows = T.oversample_indices(groups, target=7, seed=0)
    assert (groups[rows] == 0).sum() == 10 and (groups[rows] == 1).sum() == 7
    copies = np.bincount(rows, minlength=13)[10:]
    assert sorted(copies.tolist()) == [2, 2, 3]


def category_means(v: np.ndarray, a: np.ndarray, categories: np.ndarray) -> dict:
    return {c: (float(np.nanmean(v[categories == c])), float(np.nanmean(a[categories == c])))
            for c in np.unique(categories)}


def test_ferplus_votes_give_circumplex_ordered_va(real_dataset):
    root = real_dataset("ferplus")
    with open(root / "FER2013Train" / "label.csv", newline="") as f:
        votes = np.array([[float(x) for x in row[2:12]] for row in csv.reader(f)])
    v, a = T.ferplus_va(votes, FERPLUS_COLUMNS)
    means = category_means(v, a, votes[:, :8].argmax(axis=1))
    happiness, sadness, anger, neutral = means[1], means[3], means[4], means[0]
    assert happiness[0] > 0.5 and sadness[0] < -0.4 and anger[0] < -0.4
    assert anger[1] > sadness[1] + 0.4  # anger is aroused, sadness is not
    assert np.hypot(*neutral) < 0.2
    assert 0.2 < T.emotion_threshold(v, a) < 0.9


def test_taiwanese_calm_faces_sit_at_the_origin_and_happy_faces_far_from_it(real_dataset):
    root = real_dataset("taiwanese")
    with open(root / "image_info.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shares = np.array([[float(r[f"prop_{e}"]) for e in TAIWANESE_COLUMNS] for r in rows])
    intensity = np.array([[float(r[f"intensity_{e}"]) for e in TAIWANESE_COLUMNS] for r in rows])
    v, a = T.taiwanese_va(shares, intensity, TAIWANESE_COLUMNS)
    performed = np.array([r["file_name"][4] for r in rows])  # a calm ... g surprised
    r = {c: float(np.mean(T.emotion_intensity(v, a)[performed == c])) for c in "abcdefg"}
    assert r["a"] < 0.1 and r["b"] > 0.3
    assert r["a"] == min(r.values())
    assert category_means(v, a, performed)["b"][0] > 0.2  # happy: positive valence


def test_jaffe_ratings_separate_happy_from_negative_expressions(real_dataset):
    root = real_dataset("jaffe")
    lines = [line.split() for line in (root / "JAFFE_labels.txt").read_text().splitlines()]
    lines = [p for p in lines if p and p[0].isdigit()]
    v, a = T.jaffe_va(np.array([[float(x) for x in p[1:7]] for p in lines]), JAFFE_COLUMNS)
    posed = np.array([p[7].split("-")[1][:2] for p in lines])
    means = category_means(v, a, posed)
    assert means["HA"][0] > 0.15
    assert all(means[c][0] < -0.15 for c in ("SA", "AN", "DI", "FE"))
    assert abs(means["NE"][0]) < 0.1


def test_reports_label_derived_targets_and_nothing_else():
    assert T.targets_label(T.derived_targets_note()) == "derived V/A"
    assert T.targets_label({}) == ""
    assert T.targets_label({"valence_arousal": "measured"}) == ""
