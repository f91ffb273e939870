"""Confusion matrices: JSON record and the one-line summary that figure titles carry."""

from __future__ import annotations

import numpy as np
import pytest

from ray_fer.reports.confusion import confusion_record, confusion_summary, plot_confusion


def test_summary_gives_accuracy_and_the_number_of_faces():
    confusion = np.array([[30, 10], [5, 2955]])
    assert confusion_summary(confusion) == "accuracy 99.5% · 3,000 faces"
    assert confusion_summary(np.zeros((2, 2))) == "accuracy n/a · 0 faces"


def test_record_names_rows_and_columns_and_refuses_a_mismatch():
    record = confusion_record(np.array([[1, 2], [3, 4]]), ["a", "b"])
    assert record == {"classes": ["a", "b"], "rows": "true", "columns": "predicted",
                      "matrix": [[1, 2], [3, 4]]}
    with pytest.raises(ValueError, match="does not match 3 class names"):
        confusion_record(np.eye(2), ["a", "b", "c"])
    assert plot_confusion(np.eye(2), ["a", "b"], title="x\ny")[:4] == b"\x89PNG"
