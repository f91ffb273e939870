"""The real datasets of ``../shared/datasets/``, unpacked once per test session.

Tests that need one ask for the ``real_dataset`` fixture's factory and skip cleanly when
the archive is absent (for example outside this project's machines).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

DATASETS_DIR = Path(
    os.environ.get("RAY_FER_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets")
)


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")


@pytest.fixture(scope="session")
def real_dataset(tmp_path_factory) -> Callable[[str], Path]:
    """``real_dataset("fer2013")`` → the unpacked folder; skips if the archive is absent."""
    root = tmp_path_factory.mktemp("datasets")

    def get(name: str) -> Path:
        folder = root / name
        if not folder.exists():
            archive = DATASETS_DIR / f"{name}.tar.gz"
            if not archive.is_file():
                pytest.skip(f"real dataset {archive} not present")
            _safe_extract(archive, root)
        return folder

    return get
