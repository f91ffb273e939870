"""``python -m ray_fer.ensemble <search folder | checkpoint ...> [--top K | --greedy N]``.

Builds an ensemble of trained classifiers and writes it as one checkpoint folder that
``python -m ray_fer.evaluate`` (TTA included), ``predict`` and ``export`` (one ONNX graph)
take like any other. Candidates are a search's trials (their best checkpoints, from its
``results.csv``, best first) or checkpoint folders. Every candidate is run once on the
validation split its runs selected their checkpoints on, and the ensemble is chosen on
those predictions alone (:mod:`ray_fer.tuning.ensemble`): the split a result is reported
on is never read here.

Examples::

    python -m ray_fer.ensemble results/fer2013_cnns-search --top 5
    python -m ray_fer.ensemble results/fer2013_cnns-search --greedy 20 --candidates 16
    python -m ray_fer.ensemble runs/a/checkpoint_epoch-0059 runs/b/checkpoint_epoch-0047 \\
        --top 2 --out runs/ensemble-ab
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch

from ray_fer.checkpoint import Progress, copy_folder, save_checkpoint
from ray_fer.config import Config, ConfigError, override
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import read_split_faces
from ray_fer.errors import UserError, print_error
from ray_fer.explain.run import model_inputs
from ray_fer.export import Trained, load_trained
from ray_fer.methods.registry import build_model
from ray_fer.storage import resolve
from ray_fer.tuning.ensemble import Score, greedy_selection, score, top_k

RESULTS_FILE = "results.csv"
REPORT_FILE = "ensemble.json"


@dataclass(frozen=True)
class Candidate:
    """A trained classifier and its class probabilities on the validation split."""

    checkpoint: str
    trained: Trained
    probs: np.ndarray


def search_checkpoints(uri: str, endpoint: str | None = None) -> list[str]:
    """The best checkpoint of each trial of the search at ``uri``, best trial first."""
    loc = resolve(uri, endpoint)
    with loc.fs.open_input_stream(loc.join(RESULTS_FILE)) as f:
        rows = list(csv.DictReader(io.StringIO(f.read().decode())))
    return [row["checkpoint"] for row in rows if row.get("checkpoint")]


def candidate_checkpoints(sources: list[str], endpoint: str | None = None) -> list[str]:
    """Checkpoint URIs of ``sources``: search folders (those holding ``results.csv``) give
    their trials' best checkpoints, anything else is a checkpoint folder itself."""
    out: list[str] = []
    for source in sources:
        loc = resolve(source, endpoint)
        if loc.fs.get_file_info(loc.join(RESULTS_FILE)).is_file:
            out += search_checkpoints(source, endpoint)
        else:
            out.append(source)
    if not out:
        raise ConfigError(f"no checkpoints found in {', '.join(sources)} (a search folder "
                          f"lists them in its {RESULTS_FILE})")
    return list(dict.fromkeys(out))


def _validation(trained: list[Trained], checkpoints: list[str], data: str | None
                ) -> tuple[str, str]:
    """The data and the validation split every candidate selected its checkpoint on."""
    places = {(data or t.cfg.data.uri, t.cfg.data.val_split, t.cfg.data.fold) for t in trained}
    classes = {tuple(t.meta.class_names) for t in trained}
    if len(places) > 1 or len(classes) > 1:
        raise ConfigError("the candidates were validated on different data, splits or "
                          f"classes ({sorted(map(str, places))}); ensemble runs of one "
                          f"protocol, e.g. of one search ({', '.join(checkpoints[:3])} ...)")
    ((uri, split, fold),) = places
    if fold is not None:
        raise ConfigError("k-fold runs validate on their own fold: ensemble runs that "
                          "share a validation split")
    if not uri:
        raise ConfigError("the candidates trained on the embedded faces; pass --data")
    return uri, split


@torch.no_grad()
def probabilities(trained: Trained, faces: np.ndarray, device: str, batch_size: int = 512
                  ) -> np.ndarray:
    """Class probabilities (N, K) of ``trained``'s network on uint8 ``faces`` (N, H, W, C)."""
    model = trained.model.to(device).eval()
    out = []
    for start in range(0, len(faces), batch_size):
        x = model_inputs(faces[start:start + batch_size], trained.meta.image_size,
                         trained.meta.channels).to(device)
        out.append(model(x).float().softmax(1).cpu().numpy())
    trained.model.cpu()
    return np.concatenate(out)


def load_candidates(checkpoints: list[str], *, data: str | None, endpoint: str | None,
                    device: str) -> tuple[list[Candidate], np.ndarray, str, str]:
    """Every candidate with its validation probabilities; the labels, data and split."""
    trained = [load_trained(c, endpoint=endpoint) for c in checkpoints]
    uri, split = _validation(trained, checkpoints, data)
    faces, labels, _ = read_split_faces(uri, split, per_class=sys.maxsize, endpoint=endpoint)
    return ([Candidate(c, t, probabilities(t, faces, device)) for c, t in
             zip(checkpoints, trained, strict=True)], labels, uri, split)


def ensemble_config(members: list[Candidate], weights: list[float], name: str) -> Config:
    """The run config an ensemble checkpoint carries: the best member's, with the ensemble
    as its model and the best member's input as the ensemble's."""
    first = members[0].trained
    spec = [{"model": m.trained.meta.model, "options": dict(m.trained.cfg.model.options),
             "image_size": m.trained.meta.image_size, "channels": m.trained.meta.channels}
            for m in members]
    raw = first.cfg.to_dict()
    raw["model"] = {"name": "ensemble", "options": {"members": spec, "weights": weights},
                    "init": ""}
    raw["data"] |= {"image_size": first.meta.image_size, "channels": first.meta.channels}
    cfg = Config.from_dict(raw)
    return override(cfg, "run.name", name)


def write_ensemble(out: str, members: list[Candidate], weights: list[float], result: Score,
                   report: dict, endpoint: str | None = None) -> None:
    """The ensemble's checkpoint folder (``state.pt``, ``config.yaml``, ``meta.json``) and
    ``ensemble.json`` at ``out`` (local or s3://)."""
    loc = resolve(out, endpoint)
    cfg = ensemble_config(members, weights, loc.path.rstrip("/").rsplit("/", 1)[-1])
    first = members[0].trained.meta
    info = DataInfo(list(first.class_names), first.image_size, first.channels)
    model = build_model("ensemble", num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, **cfg.model.options)
    for net, member in zip(model.members, members, strict=True):
        net.load_state_dict(member.trained.model.state_dict())
    metric = "val_accuracy"
    metrics = {"epoch": 0, metric: result.accuracy, "val_loss": result.nll}
    progress = Progress(next_epoch=1, best_value=result.accuracy, best_epoch=0,
                        history=[metrics])
    # Written aside and moved (local) or copied (S3) into place: no half-written ensemble.
    parent = None if loc.is_s3 else Path(loc.path).parent
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ray_fer-ensemble-", dir=parent) as tmp:
        save_checkpoint(tmp, cfg=cfg, info=info, modules={"model": model}, optimizers={},
                        schedulers={}, progress=progress, metrics=metrics, metric=metric,
                        mode="max")
        Path(tmp, REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if loc.is_s3:
            copy_folder(pafs.LocalFileSystem(), tmp, loc.fs, loc.path)
        else:
            os.rename(tmp, loc.path)
            Path(tmp).mkdir()  # for the context manager's clean-up


def build(sources: list[str], *, out: str | None, top: int | None = None,
          greedy: int | None = None, candidates: int | None = None, data: str | None = None,
          endpoint: str | None = None, device: str = "cpu") -> dict:
    """Choose and write an ensemble (see the module docstring); returns its report."""
    if (top is None) == (greedy is None):
        raise ConfigError("choose one rule: --top K or --greedy ROUNDS")
    rule = f"top{top}" if top is not None else f"greedy{greedy}"
    out = out or f"{sources[0].rstrip('/')}/ensemble-{rule}"
    target = resolve(out, endpoint)
    if target.fs.get_file_info(target.path).type != pafs.FileType.NotFound:
        raise ConfigError(f"--out {target.uri} already exists; choose another folder")
    checkpoints = candidate_checkpoints(sources, endpoint)[:candidates or None]
    pool, labels, uri, split = load_candidates(checkpoints, data=data, endpoint=endpoint,
                                               device=device)
    probs = np.stack([c.probs for c in pool])
    weights = top_k(probs, labels, top) if top is not None else greedy_selection(
        probs, labels, greedy)
    chosen = [i for i in np.argsort(-weights, kind="stable") if weights[i] > 0]
    result = score(np.tensordot(weights, probs, axes=1) / weights.sum(), labels)
    report = {
        "rule": rule, "selected_on": {"data": uri, "split": split, "rows": int(len(labels))},
        "val_accuracy": result.accuracy, "val_loss": result.nll,
        "members": [{"checkpoint": pool[i].checkpoint, "weight": float(weights[i]),
                     "val_accuracy": score(probs[i], labels).accuracy} for i in chosen],
        "candidates": [{"checkpoint": c.checkpoint, "model": c.trained.meta.model,
                        "val_accuracy": score(c.probs, labels).accuracy} for c in pool],
    }
    write_ensemble(out, [pool[i] for i in chosen], [float(weights[i]) for i in chosen], result,
                   report, endpoint)
    return report | {"out": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_fer.ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="search folder(s) or checkpoint folder(s)")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--top", type=int, metavar="K",
                      help="the K candidates with the best validation accuracy")
    rule.add_argument("--greedy", type=int, metavar="ROUNDS",
                      help="forward selection with replacement for ROUNDS additions "
                           "(Caruana et al. 2004)")
    p.add_argument("--candidates", type=int,
                   help="only the best N of a search's trials (default: all)")
    p.add_argument("--data", help="shard prefix (default: the candidates' own data)")
    p.add_argument("--out", help="ensemble folder (default <search>/ensemble-<rule>)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    args = p.parse_args(argv)
    try:
        report = build(args.sources, out=args.out, top=args.top, greedy=args.greedy,
                       candidates=args.candidates, data=args.data, endpoint=args.endpoint,
                       device=args.device)
    except (UserError, ValueError) as exc:
        return print_error(exc)
    members = report["members"]
    print(f"ensemble of {len(members)} ({report['rule']}): val_accuracy "
          f"{report['val_accuracy']:.4f} on {report['selected_on']['split']} "
          f"(best member {max(m['val_accuracy'] for m in members):.4f})")
    print(f"wrote {report['out']}; evaluate it with python -m ray_fer.evaluate "
          f"{report['out']} --split test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
