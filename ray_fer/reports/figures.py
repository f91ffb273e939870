"""Matplotlib without a display, and finished figures as PNG bytes."""

from __future__ import annotations

import io
from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (workers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, *, title: str = "", dpi: int = 100) -> bytes:
    """``fig`` (with ``title`` above its panels, if given) as PNG bytes; closes it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()
