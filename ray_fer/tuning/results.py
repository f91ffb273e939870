"""What a search leaves beside Tune's own files.

``results.csv`` / ``results.md`` (one row per trial: params, best metric, epochs run,
status; the CSV also the trial's best checkpoint, which ``python -m ray_fer.ensemble``
reads), and once it has finished ``best_config.yaml`` (the full run config of the best
trial) and ``best_checkpoint/`` (a copy of the best trial's best checkpoint, at a stable
path that ``python -m ray_fer.evaluate`` accepts). An interrupted search leaves only the
table, its unfinished trials marked ``interrupted``.
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from ray_fer.checkpoint import copy_folder
from ray_fer.storage import Location

CHECKPOINT_PATH_KEY = "checkpoint_path"
#: The status of a trial that Ctrl-C stopped before it finished (``--resume`` finishes it).
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    #: Config key → value of the searched keys this trial had.
    params: dict[str, Any]
    #: The trial's Tune config (Optuna's names → values).
    config: dict[str, Any]
    metric: float
    best_epoch: int
    epochs: int
    status: str
    checkpoint: str | None


def _best_index(values: list[float], mode: str) -> int | None:
    finite = [(v, i) for i, v in enumerate(values) if isinstance(v, float | int) and
              math.isfinite(v)]
    if not finite:
        return None
    return (max(finite) if mode == "max" else min(finite))[1]


def _checkpoint_of(result, record: dict) -> str | None:
    """The checkpoint of the epoch ``record`` reports: the Ray Train checkpoint path the
    report carries, else the checkpoint Tune kept for that epoch (a trial that trained in
    its own process)."""
    if record.get(CHECKPOINT_PATH_KEY):
        return record[CHECKPOINT_PATH_KEY]
    return next((checkpoint.path for checkpoint, metrics in result.best_checkpoints or []
                 if metrics.get("epoch") == record.get("epoch")), None)


def checkpoint_uri(loc: Location, path: str) -> str:
    """A checkpoint path in ``loc``'s filesystem as a URI (``s3://`` on S3)."""
    return "s3://" + path if loc.is_s3 else path


def unfinished_trials(exp: Location) -> set[str]:
    """Folder names of the trials of the experiment at ``exp`` that had not finished when
    Tune last saved its state: when Ctrl-C stops a search, Tune saves it before it stops
    the trials, which it then marks as terminated, as it marks those that ASHA stopped."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    analysis = ExperimentAnalysis(exp.path, storage_filesystem=exp.fs)
    return {posixpath.basename(trial.path) for trial in analysis.trials
            if trial.status not in (Trial.TERMINATED, Trial.ERROR)}


def trial_rows(grid, *, metric: str, mode: str, epochs: Callable[[dict], int],
               params_of: Callable[[dict], dict[str, Any]], storage: Location,
               unfinished: Collection[str] = ()) -> list[TrialRow]:
    """One :class:`TrialRow` per trial of a Tune ``ResultGrid``, best first.

    ``epochs(config)`` is the schedule a trial of Tune config ``config`` was to run,
    ``params_of(config)`` its searched config keys → values; checkpoints are URIs in
    ``storage``'s filesystem; the trials whose folders are named in ``unfinished``
    (:func:`unfinished_trials`) are :data:`INTERRUPTED`.
    """
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        records = [] if history is None else history.to_dict("records")
        values = [r.get(metric, math.nan) for r in records]
        best = _best_index(values, mode)
        # Epochs, not Tune iterations: a trial retried from its checkpoint restarts the
        # iteration count but its reports carry the epoch it reached.
        last = result.metrics or {}
        ran = int(last["epoch"]) + 1 if "epoch" in last else len(records)
        if result.error is not None:
            status = "error"
        elif posixpath.basename(result.path.rstrip("/")) in unfinished:
            status = INTERRUPTED
        elif ran < epochs(result.config):
            status = "stopped early"
        else:
            status = "completed"
        rows.append(TrialRow(
            trial_id=str(last.get("trial_id") or result.path.rsplit("/", 1)[-1]),
            params=params_of(result.config), config=dict(result.config),
            metric=math.nan if best is None else float(values[best]),
            # Numbered from 0, as the checkpoints and history.json number epochs.
            best_epoch=-1 if best is None else int(records[best].get("epoch", best)),
            epochs=ran, status=status,
            checkpoint=None if best is None else _uri(storage, _checkpoint_of(
                result, records[best])),
        ))
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (math.isnan(r.metric), sign * r.metric
                                       if not math.isnan(r.metric) else 0.0))


def _uri(storage: Location, path: str | None) -> str | None:
    return None if path is None else checkpoint_uri(storage, path)


def _header(metric: str, param_keys: list[str]) -> list[str]:
    return ["trial_id", *param_keys, metric, "best_epoch", "epochs", "status"]


def _cells(row: TrialRow, param_keys: list[str]) -> list[str]:
    def fmt(v: Any) -> str:
        if v is None:  # a conditional key this trial did not search
            return ""
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    return [row.trial_id, *(fmt(row.params.get(k)) for k in param_keys), fmt(row.metric),
            str(row.best_epoch), str(row.epochs), row.status]


def results_csv(rows: list[TrialRow], metric: str, param_keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_header(metric, param_keys), "checkpoint"])
    for row in rows:
        writer.writerow([*_cells(row, param_keys), row.checkpoint or ""])
    return out.getvalue()


def results_markdown(rows: list[TrialRow], metric: str, param_keys: list[str]) -> str:
    head = _header(metric, param_keys)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r, param_keys)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_text(loc: Location, name: str, text: str) -> None:
    """Write ``text`` to ``name`` under ``loc`` (local or S3)."""
    if not loc.is_s3:
        loc.fs.create_dir(loc.path, recursive=True)
    with loc.fs.open_output_stream(loc.join(name)) as out:
        out.write(text.encode())


def export_checkpoint(loc: Location, checkpoint: str, name: str = "best_checkpoint") -> str:
    """Copy a checkpoint folder (a URI in ``loc``'s filesystem) to ``<loc>/<name>``."""
    dest = loc.join(name)
    if loc.fs.get_file_info(dest).type != pafs.FileType.NotFound:
        loc.fs.delete_dir(dest)
    copy_folder(loc.fs, checkpoint.removeprefix("s3://"), loc.fs, dest)
    return loc.child_uri(name)
