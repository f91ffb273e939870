"""Ray Data streaming of face shards: reading, decoding, augmentation, per-worker splits.

Real parts only: shards written by ``ShardWriter`` into tmp folders (and a SeaweedFS S3
bucket), a real local Ray (2 CPUs, no dashboard), a real 2-worker ``TorchTrainer``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from ray_fer.config import AugmentConfig
from ray_fer.data.augment import (
    apply_mix,
    augment_batch,
    draw_mix,
    epoch_seed,
    mix_rng,
    normalise,
)
from ray_fer.data.device_cache import DeviceCache
from ray_fer.data.shards import FaceRow, ShardError, ShardWriter
from ray_fer.data.stream import (
    ROW_ID_STRIDE,
    apply_data_augmentation,
    data_config,
    fetching_first,
    iter_eval_batches,
    iter_train_batches,
    open_split,
)
from ray_fer.storage import resolve

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SHAPE = (12, 12, 1)
ROWS = 157  # odd, and not a multiple of any batch size used here
ROWS_PER_SHARD = 64
SPLITS = ("train", "train", "train", "val", "test")
BLOCK = 2048  # bytes: blocks of about 10 rows, so both workers get several


def _faces(n: int = ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8),
        "label": rng.integers(0, len(CLASSES), n),
        "fold": np.arange(n) % 5,
        "split": np.array([SPLITS[i % len(SPLITS)] for i in range(n)]),
        "valence": rng.uniform(-1, 1, n).astype(np.float32),
        "soft": rng.dirichlet(np.ones(len(CLASSES)), n).astype(np.float32),
    }


def _write(uri: str, faces: dict[str, np.ndarray], rows_per_shard: int = ROWS_PER_SHARD
           ) -> None:
    writer = ShardWriter(resolve(uri), SHAPE, CLASSES, rows_per_shard=rows_per_shard)
    for i in range(len(faces["label"])):
        label = int(faces["label"][i])
        writer.add(FaceRow(
            image=faces["image"][i], label=label, label_name=CLASSES[label],
            # Every third row has no soft label (null, or NaNs as pyarrow 25 needs): it must
            # come back as the one-hot of its label.
            soft_label=faces["soft"][i].tolist() if i % 3 else (
                None if i % 2 else [float("nan")] * len(CLASSES)),
            valence=float(faces["valence"][i]), arousal=float("nan"),
            subject_id=f"s{i % 7}", split=str(faces["split"][i]), fold=int(faces["fold"][i]),
            dataset="tiny", source_file=f"img{i}.png",
        ))
    writer.finish(dataset="tiny", format="test")


def _row_id(i: int, rows_per_shard: int = ROWS_PER_SHARD) -> int:
    return (i // rows_per_shard) * ROW_ID_STRIDE + i % rows_per_shard


def _index_of(row_ids: np.ndarray) -> np.ndarray:
    return (row_ids // ROW_ID_STRIDE) * ROWS_PER_SHARD + row_ids % ROW_ID_STRIDE


def _all(ds: ray.data.Dataset) -> dict[str, np.ndarray]:
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def ray_local(s3_server):  # S3 variables must be set before workers start
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    return _faces()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory, faces) -> str:
    uri = str(tmp_path_factory.mktemp("shards") / "tiny")
    _write(uri, faces)
    return uri


# ------------------------------------------------------------------------- open_split


def test_open_split_refuses_a_prefix_without_manifest(ray_local, prefix, tmp_path):
    (tmp_path / "shard-00000.parquet").write_bytes(
        (Path(prefix) / "shard-00000.parquet").read_bytes())
    with pytest.raises(ShardError, match=r"manifest\.json not found.*ray_fer\.ingest"):
        open_split(str(tmp_path))


def test_open_split_decodes_exactly_the_pixels_and_labels_written(ray_local, prefix, faces):
    ds, manifest = open_split(prefix)
    got = _all(ds)
    assert manifest.num_rows == ROWS
    assert got["image"].dtype == np.uint8 and got["image"].shape == (ROWS, *SHAPE)
    idx = _index_of(got["row"])
    assert sorted(idx.tolist()) == list(range(ROWS))  # ids name every written row once
    np.testing.assert_array_equal(got["image"], faces["image"][idx])
    np.testing.assert_array_equal(got["label"], faces["label"][idx])
    assert got["label"].dtype == np.int64
    np.testing.assert_array_equal(got["valence"], faces["valence"][idx])
    assert np.isnan(got["arousal"]).all()
    expected_soft = faces["soft"][idx].copy()
    no_soft = idx % 3 == 0
    expected_soft[no_soft] = np.eye(len(CLASSES), dtype=np.float32)[faces["label"][idx][no_soft]]
    assert got["soft_label"].dtype == np.float32
    np.testing.assert_array_equal(got["soft_label"], expected_soft)


def test_open_split_keeps_only_the_selected_splits_and_folds(ray_local, prefix, faces):
    def rows(**selection) -> set[int]:
        ds, _ = open_split(prefix, columns=["row", "split", "fold"], **selection)
        return set(_index_of(_all(ds)["row"]).tolist())

    split, fold = faces["split"], faces["fold"]
    everything = np.arange(ROWS)
    assert rows(splits=["val"]) == set(everything[split == "val"])
    assert rows(splits=["train", "test"], folds=[1, 2]) == set(
        everything[(split != "val") & np.isin(fold, [1, 2])])
    assert rows(exclude_folds=[0, 4]) == set(everything[~np.isin(fold, [0, 4])])
    with pytest.raises(ShardError, match=r"no rows in split\(s\) \['holdout'\]"):
        open_split(prefix, splits=["holdout"])


def test_a_missing_shard_fails_naming_the_file(ray_local, faces, tmp_path):
    _write(str(tmp_path), faces)
    (tmp_path / "shard-00001.parquet").unlink()
    ds, _ = open_split(str(tmp_path))
    with pytest.raises(ShardError, match=r"shard-00001\.parquet: listed in the manifest but "
                                         r"unreadable"):
        _all(ds)


def test_shuffled_split_reorders_each_epoch_reproducibly(ray_local, faces, tmp_path):
    _write(str(tmp_path), faces, rows_per_shard=16)

    def epochs(seed: int) -> list[list[int]]:
        ds, _ = open_split(str(tmp_path), columns=["row"], shuffle_seed=seed)
        return [_all(ds)["row"].tolist() for _ in range(2)]

    first, second = epochs(7)
    assert sorted(first) == sorted(second) == sorted(_row_id(i, 16) for i in range(ROWS))
    assert first != second
    assert epochs(7) == [first, second]


def test_open_split_reads_the_same_rows_from_s3(ray_local, prefix, s3_server):
    uri = s3_server.new_bucket("stream") + "/tiny"
    _write(uri, _faces())
    got = _all(open_split(uri, splits=["train"])[0])
    want = _all(open_split(prefix, splits=["train"])[0])
    order = np.argsort(got["row"])
    for name, values in want.items():
        np.testing.assert_array_equal(values[np.argsort(want["row"])], got[name][order])


# ------------------------------------------------------------------------ augmentation


def _images(n: int = 16, c: int = 1) -> torch.Tensor:
    return torch.rand(n, c, 24, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_batch_keeps_shape_and_dtype(channels):
    images = _images(c=channels)
    out = augment_batch(images, AugmentConfig(crop_padding=2), _gen(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.equal(out, images)


@pytest.mark.parametrize("cfg", [
    AugmentConfig(enabled=False),
    AugmentConfig(hflip=False, max_rotate_deg=0, max_translate=0, scale=(1, 1), erasing_p=0),
])
def test_augment_batch_with_everything_off_is_the_identity(cfg):
    images = _images()
    assert torch.equal(augment_batch(images, cfg, _gen(0)), images)


def test_augment_batch_hflip_only_mirrors_exactly():
    images = _images(64)
    cfg = AugmentConfig(max_rotate_deg=0, max_translate=0, scale=(1, 1), erasing_p=0)
    out = augment_batch(images, cfg, _gen(1))
    same = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 0 < sum(mirrored) < len(images)


def test_augment_batch_is_deterministic_per_seed_and_differs_across_epochs():
    images, cfg = _images(), AugmentConfig()
    one = augment_batch(images, cfg, _gen(epoch_seed(0, 0, 0)))
    again = augment_batch(images, cfg, _gen(epoch_seed(0, 0, 0)))
    next_epoch = augment_batch(images, cfg, _gen(epoch_seed(0, 1, 0)))
    other_rank = augment_batch(images, cfg, _gen(epoch_seed(0, 0, 1)))
    assert torch.equal(one, again)
    assert not torch.equal(one, next_epoch)
    assert not torch.equal(one, other_rank)


def test_random_erasing_fills_one_rectangle_per_erased_image():
    images = torch.full((32, 1, 24, 24), 5.0)  # outside the noise range [-1, 1]
    cfg = AugmentConfig(hflip=False, max_rotate_deg=0, max_translate=0, scale=(1, 1),
                        erasing_p=1.0, erasing_area=(0.1, 0.2))
    out = augment_batch(images, cfg, _gen(2))
    for img in out[:, 0]:
        erased = img != 5.0
        ys, xs = torch.nonzero(erased, as_tuple=True)
        box = erased[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert box.all()  # a filled rectangle
        assert 0.05 * 24 * 24 <= erased.sum() <= 0.3 * 24 * 24
        assert img[erased].abs().max() <= 1


def test_augment_config_from_yaml_mapping_checks_names_and_ranges():
    cfg = AugmentConfig.from_dict({"scale": [0.8, 1.2], "where": "data"})
    assert cfg.scale == (0.8, 1.2) and cfg.where == "data"
    with pytest.raises(ValueError, match="unknown augment option"):
        AugmentConfig.from_dict({"rotate": 5})
    with pytest.raises(ValueError, match="where='gpu'"):
        AugmentConfig(where="gpu")


# ------------------------------------------------------------------------------ mixing

#: Every augmentation but mixing off, so a batch's images are its rows' pixels or mixes.
ONLY_MIXING = {"hflip": False, "max_rotate_deg": 0, "max_translate": 0, "scale": (1, 1),
               "erasing_p": 0}


def _one_hot(n: int = 16, seed: int = 4) -> torch.Tensor:
    labels = torch.randint(0, len(CLASSES), (n,), generator=_gen(seed))
    return torch.nn.functional.one_hot(labels, len(CLASSES)).float()


def _drawn(cfg: AugmentConfig, seed: int, n: int = 16):
    return draw_mix(n, 24, 24, cfg, _gen(seed), np.random.default_rng(seed))


def test_mixup_blends_images_and_targets_with_one_lam_per_batch():
    images, targets = _images(), _one_hot()
    mix = _drawn(AugmentConfig(mixup_alpha=0.4), seed=0)
    assert mix is not None and mix.box is None and 0 < mix.lam < 1
    assert sorted(mix.perm.tolist()) == list(range(16))
    out, mixed = apply_mix(images, targets, mix)
    torch.testing.assert_close(out, mix.lam * images + (1 - mix.lam) * images[mix.perm])
    torch.testing.assert_close(mixed, mix.lam * targets + (1 - mix.lam) * targets[mix.perm])
    assert (mixed >= 0).all()
    torch.testing.assert_close(mixed.sum(1), torch.ones(16))


def test_cutmix_pastes_the_partners_box_and_lam_is_the_share_outside_it():
    images, targets = _images(), _one_hot()
    areas = []
    for seed in range(20):
        mix = _drawn(AugmentConfig(cutmix_alpha=1.0), seed)
        assert mix is not None and mix.box is not None
        y0, y1, x0, x1 = mix.box
        out, mixed = apply_mix(images, targets, mix)
        inside = torch.zeros(24, 24, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(out[..., inside], images[mix.perm][..., inside])
        assert torch.equal(out[..., ~inside], images[..., ~inside])
        area = int(inside.sum())
        assert mix.lam == pytest.approx(1 - area / (24 * 24))
        torch.testing.assert_close(mixed, mix.lam * targets + (1 - mix.lam) * targets[mix.perm])
        areas.append(area)
    assert len(set(areas)) > 5 and max(areas) > 0  # boxes of varied sizes, some clipped


def test_both_alphas_switch_between_mixup_and_cutmix_per_batch():
    cfg = AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0)
    kinds = [_drawn(cfg, seed).box is None for seed in range(40)]
    assert 5 < sum(kinds) < 35


def _cache(n: int = 40) -> DeviceCache:
    faces = _faces(n, seed=1)
    return DeviceCache({
        "image": torch.from_numpy(faces["image"]), "label": torch.from_numpy(faces["label"]),
        "soft_label": torch.from_numpy(faces["soft"]), "row": torch.arange(n)})


def _mixed_epoch(cfg: AugmentConfig, epoch: int = 0, seed: int = 7, **kwargs
                 ) -> list[dict[str, torch.Tensor]]:
    return list(iter_train_batches(_cache(), batch_size=8, device=torch.device("cpu"),
                                   augment=cfg, seed=seed, epoch=epoch, rank=0,
                                   num_classes=len(CLASSES), **kwargs))


def test_mixed_train_batches_repeat_exactly_for_a_seed_and_differ_across_epochs():
    cfg = AugmentConfig(**ONLY_MIXING, mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.7)
    first, again, later = _mixed_epoch(cfg), _mixed_epoch(cfg), _mixed_epoch(cfg, epoch=1)
    for a, b in zip(first, again, strict=True):
        for key in ("row", "image", "mix_target"):
            assert torch.equal(a[key], b[key]), key
    assert not all(torch.equal(a["mix_target"], b["mix_target"])
                   for a, b in zip(first, later, strict=True))
    for batch in first:  # every batch carries mix_target, mixed or not
        target = batch["mix_target"]
        assert target.shape == (8, len(CLASSES)) and target.dtype == torch.float32
        assert (target >= 0).all()
        torch.testing.assert_close(target.sum(1), torch.ones(8))


def test_unmixed_batches_keep_their_pixels_and_carry_their_own_targets():
    cache = _cache()
    cfg = AugmentConfig(**ONLY_MIXING, mixup_alpha=0.2, mix_prob=0.0)
    for soft_labels, column in ((False, None), (True, "soft_label")):
        for batch in _mixed_epoch(cfg, soft_labels=soft_labels):
            rows = batch["row"]
            assert torch.equal(batch["image"], normalise(cache.columns["image"][rows]))
            assert torch.equal(batch["label"], cache.columns["label"][rows])
            expected = (cache.columns[column][rows] if column else
                        torch.nn.functional.one_hot(batch["label"], len(CLASSES)).float())
            torch.testing.assert_close(batch["mix_target"], expected)


def _partner(image: torch.Tensor, own: torch.Tensor, i: int) -> tuple[int, float]:
    """The row j and lam with image = lam * own[i] + (1 - lam) * own[j], closest fit."""
    fits = []
    for j in range(len(own)):
        if j == i:
            continue
        step = (own[i] - own[j]).flatten()
        lam = float((image - own[j]).flatten() @ step / (step @ step))
        fits.append((float((image - lam * own[i] - (1 - lam) * own[j]).abs().max()), j, lam))
    error, j, lam = min(fits)
    assert error < 1e-4
    return j, lam


def test_worker_mixup_blends_each_row_with_another_of_its_batch_and_their_targets():
    cache = _cache()
    for batch in _mixed_epoch(AugmentConfig(**ONLY_MIXING, mixup_alpha=1.0)):
        own = normalise(cache.columns["image"][batch["row"]])
        one_hot = torch.nn.functional.one_hot(batch["label"], len(CLASSES)).float()
        # A row the permutation leaves in place stays itself (up to rounding).
        moved = [i for i in range(8) if not torch.allclose(batch["image"][i], own[i])]
        assert moved
        lams = set()
        for i in moved:
            j, lam = _partner(batch["image"][i], own, i)
            torch.testing.assert_close(batch["mix_target"][i],
                                       lam * one_hot[i] + (1 - lam) * one_hot[j])
            lams.add(round(lam, 4))
        assert len(lams) == 1  # one lam per batch


def test_mixing_without_num_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        next(iter_train_batches(_cache(), batch_size=8, device=torch.device("cpu"),
                                augment=AugmentConfig(mixup_alpha=0.2), seed=0, epoch=0,
                                rank=0))


def test_mix_rng_is_seeded_by_the_generator():
    draws = [mix_rng(_gen(seed)).random() for seed in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2]


@pytest.mark.parametrize(("raw", "key"), [
    ({"mixup_alpha": -0.1}, "mixup_alpha"),
    ({"cutmix_alpha": -1}, "cutmix_alpha"),
    ({"mix_prob": 1.5}, "mix_prob"),
    ({"mixup_alpha": 0.2, "where": "data"}, "where='worker'"),
    ({"cutmix_alpha": 1.0, "where": "data"}, "where='worker'"),
])
def test_invalid_mixing_options_are_refused_naming_the_key(raw, key):
    with pytest.raises(ValueError, match=key):
        AugmentConfig.from_dict(raw)


def test_mixing_options_come_from_yaml_and_need_worker_augmentation():
    cfg = AugmentConfig.from_dict({"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5})
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob) == (0.2, 1.0, 0.5)
    assert cfg.mixing
    assert not AugmentConfig(mixup_alpha=0.2, enabled=False).mixing
    assert not AugmentConfig().mixing


# --------------------------------------------------------------------------- iteration


def test_min_blocks_cuts_a_small_split_finer_and_keeps_every_row(ray_local, prefix):
    whole, _ = open_split(prefix, splits=["train"])
    cut, _ = open_split(prefix, splits=["train"], min_blocks=16)
    whole, cut = whole.materialize(), cut.materialize()
    assert whole.num_blocks() < 16 <= cut.num_blocks()
    assert sorted(_all(cut)["row"].tolist()) == sorted(_all(whole)["row"].tolist())


def test_iter_eval_batches_yields_every_row_normalised(ray_local, prefix, faces):
    ds, _ = open_split(prefix)
    batches = list(iter_eval_batches(ds, batch_size=16, device=torch.device("cpu"),
                                     channels_last=True))
    assert [len(b["row"]) for b in batches] == [16] * (ROWS // 16) + [ROWS % 16]
    images = torch.cat([b["image"] for b in batches])
    idx = _index_of(torch.cat([b["row"] for b in batches]).numpy())
    expected = torch.from_numpy(faces["image"][idx]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(images, (expected - 0.5) / 0.5, rtol=0, atol=1e-6)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert batches[0]["label"].dtype == torch.int64
    assert batches[0]["soft_label"].shape == (16, len(CLASSES))


def test_iter_train_batches_repeat_exactly_for_a_seed_on_cpu(ray_local, prefix):
    def run() -> list[list[dict[str, torch.Tensor]]]:
        # A fresh dataset, as a new training run would open (its shuffle advances per epoch).
        ds, _ = open_split(prefix, splits=["train"], shuffle_seed=5, block_bytes=BLOCK)
        return [list(iter_train_batches(ds, batch_size=8, device=torch.device("cpu"),
                                        augment=AugmentConfig(), seed=5, epoch=epoch,
                                        shuffle_buffer=32, rank=0))
                for epoch in range(2)]

    first, again = run(), run()
    n_train = int((_faces()["split"] == "train").sum())
    for epoch in range(2):
        assert [len(b["row"]) for b in first[epoch]] == [8] * (n_train // 8) + [n_train % 8]
        for a, b in zip(first[epoch], again[epoch], strict=True):
            assert torch.equal(a["row"], b["row"]) and torch.equal(a["image"], b["image"])
    rows = [torch.cat([b["row"] for b in epoch]) for epoch in first]
    assert sorted(rows[0].tolist()) == sorted(rows[1].tolist())
    assert not torch.equal(rows[0], rows[1])


def test_data_placement_augments_uint8_images_on_ray_data_workers(ray_local, prefix, faces):
    ds, _ = open_split(prefix, splits=["val"])
    cfg = AugmentConfig(where="data", erasing_p=1.0)
    got = _all(apply_data_augmentation(ds, cfg))
    plain = faces["image"][_index_of(got["row"])]
    assert got["image"].dtype == np.uint8 and got["image"].shape == plain.shape
    assert not np.array_equal(got["image"], plain)
    assert apply_data_augmentation(ds, AugmentConfig()) is ds  # "worker": nothing here


# ----------------------------------------------------------------- Ray Train, 2 workers


@pytest.mark.slow
def test_two_torch_workers_see_disjoint_rows_covering_each_split_every_epoch(
        ray_local, prefix, faces, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def report_rows(config: dict) -> None:  # nested: Ray pickles it by value
        import ray.train

        from ray_fer.data.stream import AugmentConfig, iter_eval_batches, iter_train_batches

        rank = ray.train.get_context().get_world_rank()
        train = ray.train.get_dataset_shard("train")
        val = ray.train.get_dataset_shard("val")
        seen: dict[str, list[list[int]]] = {"train": [], "val": []}
        for epoch in range(2):
            rows = [b["row"] for b in iter_train_batches(
                train, batch_size=8, device=torch.device("cpu"), augment=AugmentConfig(),
                seed=0, epoch=epoch, shuffle_buffer=16)]
            seen["train"].append(torch.cat(rows).tolist() if rows else [])
            rows = [b["row"] for b in iter_eval_batches(val, batch_size=8,
                                                        device=torch.device("cpu"))]
            seen["val"].append(torch.cat(rows).tolist() if rows else [])
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(seen))
        ray.train.report({"epochs": 2})

    train_ds, _ = open_split(prefix, splits=["train"], shuffle_seed=0, block_bytes=BLOCK)
    val_ds, _ = open_split(prefix, splits=["val"], block_bytes=BLOCK)
    out = tmp_path / "rows"
    out.mkdir()
    trainer = TorchTrainer(
        report_rows, train_loop_config={"out": str(out)},
        # Half a CPU each leaves Ray Data a CPU to read with (ray_local has 2).
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False,
                                     resources_per_worker={"CPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        datasets={"train": train_ds, "val": val_ds}, dataset_config=data_config(),
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="coverage"),
    )
    result = trainer.fit()
    assert result.error is None
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for split in ("train", "val"):
        want = {_row_id(i) for i in np.flatnonzero(faces["split"] == split)}
        for epoch in range(2):
            a, b = (set(s[split][epoch]) for s in seen)
            assert len(a) == len(seen[0][split][epoch]) and len(b) == len(seen[1][split][epoch])
            assert a and b and not a & b, f"{split} epoch {epoch}: workers overlap"
            assert a | b == want, f"{split} epoch {epoch}: rows missing or foreign"


def test_fetching_first_starts_reading_before_the_caller_asks_and_keeps_the_order():
    started = threading.Event()

    def items():
        started.set()
        yield from range(5)

    out = fetching_first(items())
    assert started.wait(10), "the first item was not fetched until the caller iterated"
    assert list(out) == [0, 1, 2, 3, 4]
    assert list(fetching_first(iter(()))) == []


def test_fetching_first_raises_the_first_fetch_error_in_the_callers_thread():
    def failing():
        raise OSError("shard unreadable")
        yield

    out = fetching_first(failing())
    with pytest.raises(OSError, match="shard unreadable"):
        next(out)
