"""The one use of Ray Data's private execution index, pinned to the Ray version it was
verified on: Ray bumps the index per epoch, the seeded stream follows it, and setting it
makes a fresh dataset read as a later epoch (what a resumed run relies on)."""

from __future__ import annotations

import pytest
import ray
import ray.data
from support.tiny_shards import write_tiny_shards

from ray_fer.data.execution import VERIFIED_RAY, execution_index, start_at
from ray_fer.data.shard_source import open_split


def test_the_private_attribute_is_used_only_on_the_ray_it_was_verified_on():
    installed = ".".join(ray.__version__.split(".")[:2])
    assert installed == VERIFIED_RAY, (
        f"Ray {ray.__version__}: check that ray_fer.data.execution still reads and sets "
        "the execution index (this test's others), then update VERIFIED_RAY")
    assert execution_index(ray.data.DataContext()) == 0


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _epoch_rows(ds) -> list[int]:
    return [int(r) for batch in ds.iter_batches(batch_format="numpy") for r in batch["row"]]


@pytest.mark.slow
def test_the_stream_reorders_per_execution_and_start_at_skips_to_an_epoch(local_ray, tmp_path):
    shards = write_tiny_shards(tmp_path / "shards", train=128, val=0)

    def opened():
        return open_split(shards, splits=["train"], columns=["row"], shuffle_seed=3)[0]

    ds = opened()
    first = _epoch_rows(ds)
    assert execution_index(ds.context) == 1  # Ray counted the complete execution
    second = _epoch_rows(ds)
    assert sorted(first) == sorted(second) and first != second
    assert _epoch_rows(start_at(opened(), 1)) == second
