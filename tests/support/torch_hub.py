"""A torch hub cache that can never reach the network, for tests of pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def offline_torch_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; downloads fail at once (proxy on a closed local port).

    Returns the checkpoints folder, where a test may place a weights file by its URL name.
    """
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints
