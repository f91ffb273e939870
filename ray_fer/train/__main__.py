"""``python -m ray_fer.train <method> [--data URI] [options]``: one training run on Ray Train.

Examples::

    python -m ray_fer.train deep_emotion                      # embedded synthetic faces
    python -m ray_fer.train deep_emotion --data s3://bucket/fer2013 --workers 4 --gpu \\
        --epochs 60 --l2 1e-4 --storage s3://bucket/runs --name de-l2
    python -m ray_fer.train deep_emotion --name de-l2 --storage s3://bucket/runs --resume
    python -m ray_fer.train deep_emotion --data shards/ckplus --fold 3 --l2 1e-4
    python -m ray_fer.train deep_emotion --data shards/ckplus --fold all   # 10-fold mean ± std
    python -m ray_fer.train deep_emotion --data shards/ckplus --fold all \
        --init runs/de-fer/checkpoint_epoch-0059          # fine-tune a FER2013 run on CK+

Config precedence: packaged defaults < --config FILE < --set key=value < the flags below.
The config is checked (unknown keys, wrong types) before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from ray_fer.config import PLACEMENTS, Config, ConfigError, build_config, check_name, read_yaml
from ray_fer.errors import UserError, print_error, user_error_in

#: First-class flags → dotted config keys.
FLAGS = {
    "data": "data.uri",
    "split": "data.train_splits",
    "val_split": "data.val_split",
    "fold": "data.fold",
    "image_size": "data.image_size",
    "channels": "data.channels",
    "endpoint": "data.endpoint",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "init": "model.init",
    "compile": "train.compile",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "schedule": "optim.schedule",
    "weight_decay": "optim.weight_decay",
    "l2": "loss.l2",
    "label_smoothing": "loss.label_smoothing",
    "augment": "augment.enabled",
    "workers": "resources.workers",
    "gpu": "resources.gpu",
    "placement": "resources.placement",
    "storage": "run.storage",
    "name": "run.name",
    "resume": "run.resume",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_fer.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", help="a classifier (deep_emotion, resnet50_icbam, ...), caf, "
                   "caf_baseline, face_ae or face_ae_regressor")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML config file(s), applied in order over the packaged defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.warmup=0.1")
    p.add_argument("--data", help="shard prefix (local or s3://); default: synthetic faces")
    p.add_argument("--split", help="training split(s), comma-separated (default train)")
    p.add_argument("--val-split", help="validation split (default val)")
    p.add_argument("--fold", help="k-fold: validate on this fold, train on the others; "
                   "'all' runs every fold and reports mean ± std")
    p.add_argument("--image-size", type=int)
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"))
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=("onecycle", "cosine", "step", "none"))
    p.add_argument("--l2", type=float, help="λ of the explicit L2 term λ·Σw² in the loss")
    p.add_argument("--weight-decay", type=float, help="optimizer weight decay (not the L2 term)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", choices=("on", "off"))
    p.add_argument("--seed", type=int)
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning; the classifier's "
                        "rows are matched by class name)")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP)")
    p.add_argument("--gpu", action="store_const", const=True, help="one GPU per worker")
    p.add_argument("--placement", choices=PLACEMENTS,
                   help="placement of the workers: PACK (default), SPREAD across nodes, "
                        "STRICT_PACK, STRICT_SPREAD")
    p.add_argument("--compile", action="store_const", const=True,
                   help="torch.compile the training step (GPU only)")
    p.add_argument("--storage", help="folder or s3:// prefix holding runs (default runs/)")
    p.add_argument("--name", help="run name (default <method>-<UTC time>)")
    p.add_argument("--resume", action="store_const", const=True,
                   help="continue run --name from its latest checkpoint")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The validated config the arguments describe (a resumed run starts from its own)."""
    from ray_fer.methods.registry import get_method

    method = get_method(args.method)
    flags = {key: getattr(args, name) for name, key in FLAGS.items()}
    if args.fold == "all":
        flags["data.fold"] = None
    files = [read_yaml(path) for path in args.config]
    if args.name is not None:
        check_name(args.name)  # before a stored config is read from <storage>/<name>
    if args.resume:
        if not args.name:
            raise ConfigError("--resume needs --name (the run to continue)")
        files.insert(0, stored_config(args))
    return build_config(args.method, method.defaults, files=files, sets=args.set, flags=flags)


def stored_config(args: argparse.Namespace) -> dict:
    """The config a run was started with (``<storage>/<name>/config.yaml``)."""
    import yaml

    from ray_fer.storage import resolve

    storage = args.storage or Config(method=args.method).run.storage
    run = resolve(storage.rstrip("/") + "/" + args.name, args.endpoint)
    try:
        with run.fs.open_input_stream(run.join("config.yaml")) as f:
            return yaml.safe_load(f.read().decode())
    except FileNotFoundError:
        raise ConfigError(f"--resume: no run {run.uri} (config.yaml not found)") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except UserError as exc:
        return print_error(exc)
    from ray_fer.train.driver import cross_validate, train

    try:
        if args.fold == "all":
            summary = cross_validate(cfg)
            print(json.dumps(summary, indent=2))
            on = f" ({summary['targets']})" if summary["targets"] else ""
            print(f"{summary['metric']}: {summary['mean']:.4f} ± {summary['std']:.4f} "
                  f"over {summary['k']} folds{on}")
            return 0
        outcome = train(cfg)
    except Exception as exc:  # a UserError, also one raised in a Ray worker or read task
        found = user_error_in(exc)
        if found is None:
            raise
        if found is not exc:
            # Raised inside Ray: end Ray's stream of worker logs first, so that the error
            # is the last line printed.
            import ray

            ray.shutdown()
        return print_error(found)
    report = {"run": outcome.run_uri, "best_checkpoint": outcome.best_checkpoint,
              "latest_checkpoint": outcome.latest_checkpoint, "metrics": outcome.metrics}
    if outcome.targets:
        report["targets"] = outcome.targets
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
