"""A worker's rows of a split, kept on its device after the first pass through Ray Data.

Streaming costs a fixed time per batch (Arrow collation, pinned copy, Ray's iterator
threads) that a small model on a fast GPU cannot hide: a 48 px CNN steps in a few
milliseconds. Face datasets are small (FER2013 at 48 px gray is 65 MB of uint8), so
after the first epoch each worker can serve its rows from device memory: a seeded
permutation per epoch, batches sliced by index, no host round trip.

The rows a worker caches are those Ray Data gave it in the first epoch; later epochs
reshuffle them within the worker, not across workers (like a fixed ``DistributedSampler``
partition). Rows are kept sorted by their ``row`` id, so a run resumed from a checkpoint
rebuilds the same cache on a single worker and continues with identical batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ray_fer.config import CACHE_MODES


@dataclass(frozen=True)
class DeviceCache:
    """Columns of ``size`` rows on one device, sorted by ``row`` id."""

    columns: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return len(self.columns["row"])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.columns.values())

    def batches(self, batch_size: int, *, drop_last: bool,
                generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the cached rows, in a permutation drawn from ``generator`` (on the
        cache's device) or in row order without one; each batch is a fresh copy."""
        n = self.size
        device = self.columns["row"].device
        order = (torch.randperm(n, generator=generator, device=device) if generator is not None
                 else torch.arange(n, device=device))
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size]
            yield {name: column.index_select(0, index) for name, column in self.columns.items()}

    def num_batches(self, batch_size: int, *, drop_last: bool) -> int:
        return self.size // batch_size if drop_last else -(-self.size // batch_size)


class CacheRecorder:
    """Passes raw batches through while keeping a copy of each, up to ``budget_bytes``.

    After the pass, :meth:`cache` is the :class:`DeviceCache` of every row seen, or None
    when the rows exceeded the budget or the pass stopped early (then nothing is kept).
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._parts: list[dict[str, torch.Tensor]] | None = []
        self._bytes = 0
        self._complete = False

    def record(self, batches: Iterable[dict[str, torch.Tensor]]
               ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``batches`` unchanged, recording them (call once, iterate to the end)."""
        for batch in batches:
            if self._parts is not None:
                self._bytes += sum(t.numel() * t.element_size() for t in batch.values())
                if self._bytes > self.budget_bytes:
                    self._parts = None  # too big: stream every epoch instead
                else:
                    # Copies: consumers normalise or augment the batch they receive.
                    self._parts.append({k: v.clone() for k, v in batch.items()})
            yield batch
        self._complete = True

    def cache(self) -> DeviceCache | None:
        if not self._complete or not self._parts:
            return None
        names = self._parts[0].keys()
        columns = {k: torch.cat([p[k] for p in self._parts]) for k in names}
        order = torch.argsort(columns["row"])
        self._parts = []
        return DeviceCache({k: v.index_select(0, order) for k, v in columns.items()})


def cache_budget(mode: str, device: torch.device, fraction: float) -> int:
    """Bytes a worker may cache per split under ``mode`` (0 = do not cache).

    ``auto`` caches on CUDA only, within ``fraction`` of the device memory free now (CPU
    workers share host memory with Ray's object store); ``on`` caches on any device, on
    CUDA within the same bound, on CPU without one.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return 0
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return 2**62
