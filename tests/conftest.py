"""Shared fixtures: real datasets, a real S3 server (SeaweedFS), a real local Ray."""

from support.datasets import real_dataset  # noqa: F401
from support.s3 import s3_server  # noqa: F401
