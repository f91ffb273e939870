"""Shared fixtures: real datasets, a real S3 server (SeaweedFS), a real local Ray.

Every test model is tiny: torch's intra-op threads gain nothing on it, and on a 2-core
machine their spin-waiting multiplies wall time (20x measured). One thread per process,
set before torch loads so Ray's worker processes inherit it too.

Ray Train's controller polls its workers every 2 s, and each epoch's report and a run's
end wait for a poll: with test epochs of well under a second that wait is most of a
run's time, so the tests' Ray processes poll every 0.25 s.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import torch  # noqa: E402
from support.datasets import real_dataset  # noqa: E402, F401
from support.local_ray import local_ray  # noqa: E402, F401
from support.s3 import s3_server  # noqa: E402, F401
from support.torch_hub import offline_torch_hub  # noqa: E402, F401

torch.set_num_threads(1)
