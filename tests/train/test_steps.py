"""Method-level helpers of :mod:`ray_fer.train.steps`."""

from __future__ import annotations

from ray_fer.data.targets import derived_targets_note
from ray_fer.train.steps import method_for, run_targets


def test_only_runs_that_train_on_derived_va_are_labelled_so():
    """A classifier on a set whose manifest also carries derived V/A (JAFFE, FER+) trains
    on its class labels: its reports must not say "derived V/A"."""
    derived = derived_targets_note()
    assert run_targets(method_for("caf"), derived) == "derived V/A"
    assert run_targets(method_for("face_ae"), derived) == "derived V/A"
    assert run_targets(method_for("deep_emotion"), derived) == ""
    assert run_targets(method_for("caf"), {"valence_arousal": "measured"}) == ""
