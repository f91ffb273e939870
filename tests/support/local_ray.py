"""A real local Ray for the tests of one module (two CPUs, no dashboard)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """Ray started for this module, or the one another module of the session started (then
    left to it). Request ``s3_server`` before this fixture when the workers must inherit
    its S3 variables."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
