"""Training curves: each metric per epoch, train against validation, as one PNG.

Epochs are numbered from 0, as in ``history.json`` and the checkpoint folders
(``checkpoint_epoch-0000`` holds the first epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

from ray_fer.reports.figures import png_bytes, pyplot

#: Panels drawn first, in this order, when a history has them; other shared metrics follow.
PREFERRED = ("loss", "accuracy", "macro_f1")
#: Panels per row: a V/A model's dozen metrics wrap instead of making one long strip.
PER_ROW = 4


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


def curves_figure(history: Sequence[dict]):
    """The matplotlib figure that :func:`plot_curves` encodes: a panel per metric, at most
    :data:`PER_ROW` to a row."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    names = curve_metrics(history)
    if not names:
        raise ValueError("history has no val_* metrics to plot")
    cols = min(len(names), PER_ROW)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    epochs = sorted({row["epoch"] for row in history})
    for ax, name in zip(axes.flat, names, strict=False):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = [(row["epoch"], row[f"{split}_{name}"]) for row in history
                      if isinstance(row.get(f"{split}_{name}"), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, markersize=3, label=split)
        if len(epochs) <= 12:  # a tick per epoch (a lone epoch would get 0.02 steps)
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (from 0, as checkpoint_epoch-NNNN)")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    return fig


def plot_curves(history: Sequence[dict], title: str = "") -> bytes:
    """PNG bytes: one panel per metric, train and validation against the epoch number
    (from 0, as ``history.json`` and ``checkpoint_epoch-NNNN`` count)."""
    return png_bytes(curves_figure(history), title=title, dpi=110)
