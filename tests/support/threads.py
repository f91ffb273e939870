"""One intra-op thread for small CPU models.

Tiny convolutions gain nothing from torch's intra-op threads, and on a shared, loaded
machine the threads' spin-waiting multiplies wall time (20x measured on 2 busy cores).
Use with ``pytestmark = pytest.mark.usefixtures("single_thread")`` after importing it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
