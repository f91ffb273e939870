"""Training curves: each metric per epoch, train against validation, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence

from ray_fer.reports.figures import png_bytes, pyplot

#: Panels drawn first, in this order, when a history has them; other shared metrics follow.
PREFERRED = ("loss", "accuracy", "macro_f1")


def curve_metrics(history: Sequence[dict]) -> list[str]:
    """Metric names with a ``val_`` series in ``history`` (preferred first); their
    ``train_`` series, where there is one, is drawn beside it."""
    names: set[str] = set()
    for row in history:
        for key, value in row.items():
            split, _, name = key.partition("_")
            if split == "val" and name and isinstance(value, int | float):
                names.add(name)
    return [n for n in PREFERRED if n in names] + sorted(names - set(PREFERRED))


def plot_curves(history: Sequence[dict], title: str = "") -> bytes:
    """PNG bytes: one panel per metric, train and validation against the epoch number."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    names = curve_metrics(history)
    if not names:
        raise ValueError("history has no val_* metrics to plot")
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(row["epoch"] + 1, row[f"{split}_{name}"]) for row in history
                      if isinstance(row.get(f"{split}_{name}"), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, markersize=3, label=split)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    return png_bytes(fig, title=title, dpi=110)
