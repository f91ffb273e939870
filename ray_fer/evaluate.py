"""``python -m ray_fer.evaluate <checkpoint> [--data URI] [--split NAME] [--tta flip|tencrop]``.

Loads a checkpoint (local or s3://), runs its model over every row of a split with Ray Data
(no Ray Train needed), and writes ``metrics.json`` (the method's metrics under the same
names training reports, e.g. ``val_accuracy``; for classifiers also per-class precision,
recall and F1, and test-time-augmented accuracy reported separately), ``confusion.json`` and
``confusion.png`` to ``--out`` (default ``<run>/eval/<checkpoint>-<split>``).

Plain metrics go through the same ``eval_batch`` code as training's validation, so for the
same checkpoint and rows they reproduce what training reported.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from ray_fer.checkpoint import read_checkpoint
from ray_fer.config import ConfigError
from ray_fer.data import stream
from ray_fer.errors import UserError, print_error
from ray_fer.methods import metrics as M
from ray_fer.methods.base import TrainState
from ray_fer.methods.classify import classify_eval_sums, classify_logits
from ray_fer.methods.registry import get_method
from ray_fer.reports.confusion import confusion_record, confusion_summary, plot_confusion
from ray_fer.storage import resolve, storage_error, writable_folder
from ray_fer.train.epoch import evaluate_shard, fit_batch
from ray_fer.train.plan import check_data_files, resolve_data_uri

TTA_CHOICES = ("flip", "tencrop")


def _select(split: str, fold: int | None, train_splits: list[str]) -> dict:
    """open_split arguments: a split, or (k-fold) one fold of the training splits."""
    if fold is None:
        return {"splits": [split]}
    return {"splits": train_splits, "folds": [fold]}


@torch.no_grad()
def _tta_confusion(state: TrainState, ds, tta: str, batch_size: int) -> np.ndarray:
    model = state.modules["model"].eval()
    total = None
    for batch in stream.iter_eval_batches(ds, batch_size=batch_size, device=state.device):
        batch = fit_batch(batch, state.info)
        sums = classify_eval_sums(classify_logits(model, batch["image"], tta), batch["label"],
                                  state.info.num_classes)
        total = sums["confusion"] if total is None else total + sums["confusion"]
    return total.cpu().numpy()


def evaluate(checkpoint: str, *, data: str | None = None, split: str | None = None,
             fold: int | None = None, tta: str | None = None, endpoint: str | None = None,
             batch_size: int = 256, device: str = "cpu") -> tuple[dict, np.ndarray | None]:
    """Metrics of ``checkpoint`` on ``split`` (or fold ``fold``) of ``data``.

    ``data`` defaults to the run's own data; ``split`` to the run's validation split (its
    validation fold when the run was k-fold). Returns (metrics, confusion matrix or None).
    """
    if tta is not None and tta not in TTA_CHOICES:
        raise ValueError(f"unknown --tta {tta!r}; choose one of {', '.join(TTA_CHOICES)}")
    loaded = read_checkpoint(checkpoint, endpoint, map_location=device)
    cfg, info = loaded.cfg, loaded.info
    method = get_method(cfg.method)
    modules = method.build_modules(cfg, info)
    loaded.restore(modules)
    for module in modules.values():
        module.to(device)
    state = TrainState(cfg=cfg, info=info, device=torch.device(device), modules=modules,
                       optimizers={}, schedulers={})
    if split is None and fold is None:
        fold = cfg.data.fold
        split = cfg.data.val_split
    uri = data or resolve_data_uri(cfg)
    check_data_files(uri, endpoint)  # a shard missing or cut short: said before Ray starts
    ds, manifest = stream.open_split(uri, endpoint=endpoint,
                                     **_select(split, fold, cfg.data.train_splits))
    if list(manifest.class_names) != info.class_names:
        raise ConfigError(f"{uri} has classes {manifest.class_names}, the checkpoint was "
                          f"trained on {info.class_names}")
    sums = {k: v.cpu() for k, v in evaluate_shard(method, state, ds, batch_size).items()}
    prefix = "val" if (split == cfg.data.val_split and fold == cfg.data.fold) else (
        f"fold{fold}" if fold is not None else split)
    out: dict = {"checkpoint": checkpoint, "method": cfg.method, "data": uri, "split": split,
                 "fold": fold,
                 "epoch": loaded.meta["epoch"], "rows": int(sums["count"]),
                 "class_names": info.class_names,
                 **method.summarize(sums, prefix, info)}
    confusion = None
    if method.task == "classify":
        confusion = sums["confusion"].numpy()
        report = M.classification_metrics(confusion)
        out["per_class"] = {
            name: {"precision": float(report["precision"][i]),
                   "recall": float(report["recall"][i]), "f1": float(report["f1"][i]),
                   "support": int(confusion[i].sum())}
            for i, name in enumerate(info.class_names)}
        if tta is not None:
            tta_report = M.classification_metrics(
                _tta_confusion(state, ds, tta, batch_size))
            out["tta"] = {"mode": tta, "accuracy": tta_report["accuracy"],
                          "macro_f1": tta_report["macro_f1"]}
    elif tta is not None:
        raise ConfigError(f"--tta applies to classifiers; {cfg.method!r} is not one")
    return out, confusion


def write_report(out_uri: str, metrics: dict, confusion: np.ndarray | None,
                 endpoint: str | None = None) -> None:
    """``metrics.json`` (+ ``confusion.json`` and ``confusion.png``) under ``out_uri``."""
    loc = resolve(out_uri, endpoint)
    if not loc.is_s3:
        writable_folder(loc.path)
    files = {"metrics.json": json.dumps(metrics, indent=2) + "\n"}
    if confusion is not None:
        class_names = metrics["class_names"]
        files["confusion.json"] = json.dumps(confusion_record(confusion, class_names),
                                             indent=2) + "\n"
        files["confusion.png"] = plot_confusion(confusion, class_names,
                                                title=confusion_title(metrics, confusion))
    try:
        for name, content in files.items():
            with loc.fs.open_output_stream(loc.join(name)) as f:
                f.write(content.encode() if isinstance(content, str) else content)
    except OSError as exc:
        raise storage_error(loc, exc, "write") from None


def confusion_title(metrics: dict, confusion: np.ndarray) -> str:
    """E.g. ``deep_emotion · de-l2/checkpoint_epoch-0009 (epoch 9)`` over
    ``split test · accuracy 71.2% · 3,589 faces``."""
    run_and_checkpoint = "/".join(metrics["checkpoint"].rstrip("/").split("/")[-2:])
    what = (f"split {metrics['split']}" if metrics["fold"] is None
            else f"fold {metrics['fold']} of the training splits")
    return (f"{metrics['method']} · {run_and_checkpoint} (epoch {metrics['epoch']})\n"
            f"{what} · {confusion_summary(confusion)}")


def default_out(checkpoint: str, split: str | None, fold: int | None) -> str:
    """``<run>/eval/<checkpoint folder>-<split or foldN>``."""
    ckpt = checkpoint.rstrip("/")
    run, _, name = ckpt.rpartition("/")
    what = f"fold{fold}" if fold is not None else (split or "val")
    return f"{run or '.'}/eval/{name}-{what}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_fer.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint folder (local or s3://)")
    p.add_argument("--data", help="shard prefix (default: the run's own data)")
    p.add_argument("--split", help="split to evaluate (default: the run's validation split)")
    p.add_argument("--fold", type=int, help="k-fold: evaluate this fold of the training splits")
    p.add_argument("--tta", choices=TTA_CHOICES, help="also report test-time-augmented metrics")
    p.add_argument("--out", help="output folder or s3:// prefix")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    args = p.parse_args(argv)
    out = args.out or default_out(args.checkpoint, args.split, args.fold)
    try:
        metrics, confusion = evaluate(args.checkpoint, data=args.data, split=args.split,
                                      fold=args.fold, tta=args.tta, endpoint=args.endpoint,
                                      batch_size=args.batch_size, device=args.device)
        write_report(out, metrics, confusion, args.endpoint)
    except (UserError, ValueError) as exc:  # also one raised in a Ray Data read task
        return print_error(exc)
    print(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
