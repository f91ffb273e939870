"""Training curves: a panel per metric, epochs numbered as history.json and checkpoints do."""

from __future__ import annotations

import pytest

from ray_fer.reports.curves import curves_figure, plot_curves


def test_epochs_are_numbered_from_0_as_in_history_and_checkpoint_names():
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1),
                "val_accuracy": 0.3 + 0.1 * e} for e in range(3)]
    fig = curves_figure(history)
    loss, accuracy = fig.axes
    assert [line.get_label() for line in loss.lines] == ["train", "val"]
    for line in [*loss.lines, *accuracy.lines]:
        assert list(line.get_xdata()) == [0, 1, 2]  # checkpoint_epoch-0000 is epoch 0
    assert "from 0" in loss.get_xlabel()
    assert plot_curves(history, title="run")[:4] == b"\x89PNG"


def test_a_history_without_validation_metrics_is_refused():
    with pytest.raises(ValueError, match="no val_"):
        plot_curves([{"epoch": 0, "train_loss": 1.0}])


def test_many_metrics_wrap_into_rows_and_one_epoch_gets_a_whole_number_axis():
    history = [{"epoch": 0, **{f"val_m{i}": 0.1 * i for i in range(10)}}]
    fig = curves_figure(history)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 10 and len(fig.axes) == 12  # 3 rows of 4, the last two hidden
    assert len({round(ax.get_position().y0, 2) for ax in shown}) == 3
    assert list(shown[0].get_xticks()) == [0]
