"""Ray Data's execution index: the epoch a seeded training stream draws its block order from.

Ray Data counts the complete executions of a Dataset in its ``DataContext`` and bumps the
count after each one (each epoch of a training split). Its own file shuffling
(``read_parquet(shuffle=FileShuffleConfig(seed))``) draws each epoch's file order from it,
and :class:`ray_fer.data.shard_source.FaceShardDatasource` draws its shard and row-group
order the same way. Ray 2.60 keeps the count in the private ``DataContext._execution_idx``
and offers no public way to read or set it, so this module is the only place that
touches it:

- :func:`execution_index` reads it when a read plans its tasks. Without it every epoch
  would read the blocks in one order (the seeded shuffle would not reshuffle).
- :func:`start_at` sets it when a run resumes at a later epoch. Without it the resumed
  epochs would read in the order of epochs 0, 1, ... again, and a resumed run would no
  longer reproduce an uninterrupted one.

``tests/data/test_execution.py`` pins both to :data:`VERIFIED_RAY`: on another Ray
version it fails until they are checked again.
"""

from __future__ import annotations

from typing import Any, TypeVar

#: The Ray minor version this module's use of the private attribute was verified on.
VERIFIED_RAY = "2.60"
_ATTRIBUTE = "_execution_idx"

D = TypeVar("D")


def execution_index(context: Any) -> int:
    """The number of complete executions of the Dataset whose ``DataContext`` this is
    (0 for a context that has none recorded)."""
    return int(getattr(context, _ATTRIBUTE, 0) or 0)


def start_at(dataset: D, epoch: int) -> D:
    """``dataset`` (a Ray Dataset), its next execution counted as number ``epoch``."""
    setattr(dataset.context, _ATTRIBUTE, int(epoch))
    return dataset
