"""Device caches of a worker's rows: complete, sorted by row id, seeded, within budget."""

from __future__ import annotations

import pytest
import torch

from ray_fer.data.device_cache import CacheRecorder, DeviceCache, cache_budget


def raw_batches(rows: list[int], batch_size: int):
    """Batches as the stream hands them over: uint8 images, labels and row ids."""
    for start in range(0, len(rows), batch_size):
        row = torch.tensor(rows[start:start + batch_size], dtype=torch.int64)
        yield {"image": (row % 251).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 4, 4, 1)
               .contiguous(), "label": row % 7, "row": row}


SHUFFLED = [13, 2, 40, 7, 31, 5, 22, 18, 9, 11]


def test_recorder_passes_batches_unchanged_and_caches_every_row_sorted_by_id():
    recorder = CacheRecorder(budget_bytes=10**6)
    passed = [b["row"].tolist() for b in recorder.record(raw_batches(SHUFFLED, 4))]
    assert passed == [SHUFFLED[:4], SHUFFLED[4:8], SHUFFLED[8:]]  # the partial batch too
    cache = recorder.cache()
    assert cache.columns["row"].tolist() == sorted(SHUFFLED)
    assert torch.equal(cache.columns["label"], cache.columns["row"] % 7)
    assert torch.equal(cache.columns["image"][:, 0, 0, 0], (cache.columns["row"] % 251)
                       .to(torch.uint8))


def test_consumers_may_modify_their_batch_without_touching_the_cache():
    recorder = CacheRecorder(budget_bytes=10**6)
    for batch in recorder.record(raw_batches(SHUFFLED, 4)):
        batch["image"].zero_()
    assert recorder.cache().columns["image"].any()


def test_over_budget_or_unfinished_passes_cache_nothing():
    big = CacheRecorder(budget_bytes=100)
    assert len(list(big.record(raw_batches(SHUFFLED, 4)))) == 3
    assert big.cache() is None
    stopped = CacheRecorder(budget_bytes=10**6)
    next(iter(stopped.record(raw_batches(SHUFFLED, 4))))
    assert stopped.cache() is None


def cached(rows: list[int]) -> DeviceCache:
    recorder = CacheRecorder(budget_bytes=10**6)
    for _ in recorder.record(raw_batches(rows, 3)):
        pass
    return recorder.cache()


def test_epochs_from_the_cache_are_seeded_permutations_of_every_row():
    cache = cached(list(range(100)))

    def epoch(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [r for b in cache.batches(16, drop_last=False, generator=g)
                for r in b["row"].tolist()]

    assert sorted(epoch(1)) == list(range(100))
    assert epoch(1) == epoch(1) and epoch(1) != epoch(2)
    g = torch.Generator().manual_seed(1)
    full = [len(b["row"]) for b in cache.batches(16, drop_last=True, generator=g)]
    assert full == [16] * 6 == [16] * cache.num_batches(16, drop_last=True)
    assert cache.num_batches(16, drop_last=False) == 7
    in_order = [r for b in cache.batches(30, drop_last=False) for r in b["row"].tolist()]
    assert in_order == list(range(100))


def test_budget_follows_the_mode_and_device():
    cpu = torch.device("cpu")
    assert cache_budget("off", cpu, 0.2) == 0
    assert cache_budget("auto", cpu, 0.2) == 0  # CPU workers share RAM with the object store
    assert cache_budget("on", cpu, 0.2) > 10**12
    with pytest.raises(ValueError, match="data.cache must be one of auto, on, off"):
        cache_budget("always", cpu, 0.2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_caches_on_cuda_within_the_free_memory_share():
    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    assert 0 < cache_budget("auto", device, 0.2) <= 0.2 * free * 1.01
