"""``python -m ray_fer.tune <method> [options]``: distributed hyperparameter search on Ray Tune.

Optuna's TPE sampler (seeded) proposes values from ``search_spaces/<method>.yaml``, a
concurrency limit bounds the trials in flight, ASHA stops weak trials early on the
method's validation metric, and every trial is a ``ray_fer.train`` run: in the trial's own
reused process when it has one worker, on Ray Train when it has several
(:mod:`ray_fer.tuning.trial`).

Examples::

    python -m ray_fer.tune caf                              # embedded data, local Ray
    python -m ray_fer.tune deep_emotion --data s3://b/fer2013 --num-samples 32 \\
        --gpus-per-trial 0.25 --storage s3://b/searches --name de-l2
    python -m ray_fer.tune deep_emotion --storage s3://b/searches --name de-l2 --resume
    ray job submit --working-dir . -- python -m ray_fer.tune caf --storage s3://b/searches

On a cluster (``ray job submit``, RAY_ADDRESS set) it connects to it; otherwise it
starts a local Ray. Results: ``<storage>/<name>/`` holds Tune's trial folders with their
TensorBoard files (``tensorboard --logdir <storage>/<name>``), ``results.csv``/``.md``,
``best_config.yaml`` and ``best_checkpoint/``. Ctrl-C ends a search as interrupted (exit
130): its table marks the unfinished trials, no best config or checkpoint is written, and
``--resume`` finishes it.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from ray_fer.cluster.runtime import (
    connect,
    stop_tune_copying_credentials,
    uncached_bytecode,
    warm_workers,
)
from ray_fer.config import (
    PLACEMENTS,
    Config,
    ConfigError,
    build_config,
    check_name,
    override,
    validate,
)
from ray_fer.data.shards import read_manifest
from ray_fer.errors import UserError, print_error
from ray_fer.methods.registry import get_method, model_options
from ray_fer.storage import Location, resolve
from ray_fer.tuning.interrupt import signals_seen
from ray_fer.tuning.results import (
    export_checkpoint,
    results_csv,
    results_markdown,
    trial_rows,
    unfinished_trials,
    write_text,
)
from ray_fer.tuning.search import Search, bases_from_yaml, make_search
from ray_fer.tuning.space import SearchSpace, load_search_space, parse_search_space
from ray_fer.tuning.trial import in_trial, trial_runtime_env

#: Search settings and their defaults (the YAML's ``search_settings`` and the flags win).
DEFAULT_SETTINGS = {"num_samples": 8, "max_concurrent": 2, "grace_period": 1,
                    "reduction_factor": 2, "time_budget_s": None}
#: Each setting's flag and lowest value (a reduction factor of 1 would keep every trial).
SETTING_BOUNDS = {"num_samples": ("--num-samples", 1), "max_concurrent": ("--max-concurrent", 1),
                  "grace_period": ("--grace-period", 1),
                  "reduction_factor": ("--reduction-factor", 2),
                  "time_budget_s": ("--time-budget", 1)}
#: The base config of an experiment, saved at its start so --resume continues it unchanged.
BASE_FILE = "base_configs.yaml"
#: The search space as the experiment started it (``--resume`` reads it, not today's file).
SPACE_FILE = "search_space.yaml"
#: Exit status of an interrupted search (128 + SIGINT, as a shell reports Ctrl-C).
INTERRUPTED_EXIT = 130
#: Heads the results of an interrupted search: they name no winner.
PARTIAL_NOTE = ("Interrupted: partial results, no best trial chosen; resume the search "
                "with --resume.\n\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ray_fer.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", help="method or search space to search (search_spaces/<name>.yaml, "
                                  "e.g. caf, deep_emotion, fer2013_cnns)")
    p.add_argument("--space", help="search-space YAML (default search_spaces/<name>.yaml)")
    p.add_argument("--data", help="shard prefix (local or s3://); default: synthetic faces")
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--time-budget", type=float, dest="time_budget_s",
                   help="stop starting trials after this many seconds")
    p.add_argument("--grace-period", type=int,
                   help="ASHA: epochs of the longest schedule before a trial may stop (the "
                        "same share of a shorter one)")
    p.add_argument("--reduction-factor", type=int, help="ASHA reduction factor")
    p.add_argument("--epochs", type=int,
                   help="epochs per trial (ASHA's max_t, unless train.epochs is searched)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (DDP)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per Train worker; a fraction packs several trials on one GPU")
    p.add_argument("--cpus-per-worker", type=int, help="CPUs per Train worker")
    p.add_argument("--placement", choices=PLACEMENTS,
                   help="placement of a trial's workers (default PACK; SPREAD across nodes)")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a failed trial, from its latest checkpoint (default 1; "
                        "a lost node or a killed worker costs one)")
    p.add_argument("--storage", default="results",
                   help="folder or s3:// prefix for experiments (default results/)")
    p.add_argument("--name", help="experiment name (default <name>-search)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted experiment --name (keeps finished trials)")
    p.add_argument("--seed", type=int, default=0, help="Optuna TPE seed")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix any config key for every trial, e.g. --set data.fold=0")
    return p


#: The search spaces installed with ray_fer (``ray_fer/search_spaces`` links to the
#: repository's ``search_spaces/``; the wheel holds copies).
PACKAGED_SPACES = Path(__file__).resolve().parent / "search_spaces"


def default_space_path(name: str) -> Path:
    """``search_spaces/<name>.yaml`` in the working directory (a checkout's, where users
    edit them), else the one installed with ray_fer."""
    for folder in (Path.cwd() / "search_spaces", PACKAGED_SPACES):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"no search space {name!r}: expected search_spaces/{name}.yaml "
                      "(or pass --space FILE)")


def _packaged_value(cfg: Config, key: str):
    """``key``'s value in ``cfg``; a model option it does not set has the model's default."""
    node = cfg.to_dict()
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    if last not in node and path == ["model", "options"]:
        return model_options(cfg.model_name)[last]
    return node[last]


def base_configs(args: argparse.Namespace) -> Search:
    """Each searched method's base config and the validated space, as :class:`Search`.

    Precedence: packaged defaults < the space's fixed settings < --set < flags.
    """
    flags = {"data.uri": args.data, "data.endpoint": args.endpoint, "train.epochs": args.epochs,
             "resources.workers": args.workers_per_trial,
             "resources.cpus_per_worker": args.cpus_per_worker,
             "resources.placement": args.placement}
    if args.gpus_per_trial:
        flags |= {"resources.gpu": True, "resources.gpus_per_worker": args.gpus_per_trial}
    packaged: dict[str, Config] = {}

    def packaged_config(method: str) -> Config:
        if method not in packaged:
            packaged[method] = build_config(method, get_method(method).defaults)
        return packaged[method]

    def check(method: str, key: str, value) -> None:
        cfg = override(packaged_config(method), key, value)
        validate(cfg)
        get_method(method).check_config(cfg)

    path = Path(args.space) if args.space else default_space_path(args.method)
    space = load_search_space(path, check, lambda m, key: _packaged_value(packaged_config(m),
                                                                          key))
    if args.method not in (*space.methods, path.stem):
        raise ConfigError(f"{space.source}: searches {', '.join(space.methods)}, not "
                          f"{args.method!r}")
    bases = {}
    for method in space.methods:
        cfg = packaged_config(method)
        for key, value in space.fixed.items():
            cfg = override(cfg, key, value)
        cfg = build_config(method, get_method(method).defaults, files=[cfg.to_dict()],
                           sets=args.set, flags=flags)
        get_method(method).check_config(cfg)
        bases[method] = cfg
    # A key fixed by --set or a flag (e.g. --epochs) is not searched.
    pinned = {key.partition("=")[0].strip() for key in args.set} | {
        key for key, value in flags.items() if value is not None}
    first = bases[space.methods[0]]
    return make_search(bases, space, {key: _packaged_value(first, key) for key in pinned
                                      if key in space.keys})


def settings(args: argparse.Namespace, space: SearchSpace, epochs: int) -> dict:
    """Search settings: defaults < the YAML's ``search_settings`` < flags; each checked
    against its lower bound, the grace period against the longest schedule, ``epochs``
    (ConfigError naming the flag)."""
    out = DEFAULT_SETTINGS | space.settings
    for key in DEFAULT_SETTINGS:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    for key, (flag, low) in SETTING_BOUNDS.items():
        if out[key] is not None and not out[key] >= low:  # also refuses NaN
            raise ConfigError(f"{flag} must be >= {low}, got {out[key]}")
        if out[key] is not None and not math.isfinite(out[key]):
            raise ConfigError(f"{flag} must be a finite number, got {out[key]}")
    if out["grace_period"] > epochs:
        raise ConfigError(f"--grace-period {out['grace_period']} is longer than the longest "
                          f"schedule ({epochs} epochs, --epochs); lower it or train longer")
    return out


def stored_search(exp: Location) -> Search:
    """The base configs and space an interrupted experiment was started with."""
    texts = {}
    for name in (BASE_FILE, SPACE_FILE):
        try:
            with exp.fs.open_input_stream(exp.join(name)) as f:
                texts[name] = f.read().decode()
        except FileNotFoundError:
            raise ConfigError(f"--resume: {exp.child_uri(name)} not found; is {exp.uri} a "
                              "ray_fer search?") from None
    bases, pinned = bases_from_yaml(texts[BASE_FILE], exp.child_uri(BASE_FILE))
    space = parse_search_space(yaml.safe_load(texts[SPACE_FILE]), exp.child_uri(SPACE_FILE),
                               lambda method, key, value: None,
                               lambda m, key: _packaged_value(bases[m], key))
    return make_search(bases, space, pinned)


def asha_settings(search: Search, opts: dict) -> dict:
    """ASHA's settings: trials compared at equal shares of their own schedules.

    A trial's one-cycle or cosine schedule sets where its accuracy stands after a given
    epoch: an 80-epoch trial is still warming up when a 40-epoch one is at its peak rate.
    ASHA's clock is therefore the share of a trial's schedule done (``schedule_pct``); its
    rungs sit at ``grace_period`` epochs of the longest schedule times powers of the
    reduction factor, which is the same share of every shorter schedule.
    """
    from ray_fer.train.worker import SCHEDULE_PCT

    longest = search.max_epochs
    return {"time_attr": SCHEDULE_PCT, "metric": search.metric, "mode": search.mode,
            "max_t": 100.0, "grace_period": 100.0 * opts["grace_period"] / longest,
            "reduction_factor": opts["reduction_factor"]}


def build_tuner(search: Search, opts: dict, *, storage: str, name: str, seed: int,
                resume: bool, max_failures: int = 1,
                trial_fn: Callable[..., None] | None = None):
    """A new or restored ``Tuner`` for the search (``trial_fn`` replaces
    :func:`ray_fer.tuning.trial.run_trial`, with its signature).

    Optuna's TPE models the parameters jointly (multivariate, grouped by the conditional
    keys each trial has), and with several trials in flight it lets the running ones count
    as bad guesses (constant liar) so that parallel trials do not crowd one region.
    """
    import warnings

    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ray_fer.tuning.trial import run_trial, trial_resources

    cfg = search.first
    exp = resolve(storage.rstrip("/") + "/" + name, cfg.data.endpoint)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or run_trial, search=search,
                             storage=exp.child_uri("train")),
        trial_resources(cfg))
    store = resolve(storage, cfg.data.endpoint)
    if resume:
        if not tune.Tuner.can_restore(exp.path, storage_filesystem=exp.fs):
            raise ConfigError(f"--resume: no experiment to restore at {exp.uri}")
        return tune.Tuner.restore(exp.path, trainable, resume_unfinished=True,
                                  resume_errored=True, storage_filesystem=exp.fs)
    with warnings.catch_warnings():  # multivariate/group are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                             constant_liar=True)
    searcher = OptunaSearch(space=search.space, sampler=sampler, metric=search.metric,
                            mode=search.mode,
                            points_to_evaluate=list(search.space.start_points) or None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=opts["max_concurrent"]),
            scheduler=ASHAScheduler(**asha_settings(search, opts)),
            num_samples=opts["num_samples"], time_budget_s=opts["time_budget_s"],
            # A trial that trains in its own process leaves it warm for the next one.
            reuse_actors=in_trial(cfg)),
        run_config=tune.RunConfig(
            name=name, storage_path=store.path, storage_filesystem=store.fs,
            # The checkpoints of trials that train in their own process (Ray Train keeps
            # those of the others in their run folders).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints, checkpoint_score_attribute=search.metric,
                checkpoint_score_order=search.mode),
            # A trial that fails is retried from its checkpoint up to max_failures times,
            # then fails on its own; the rest of the search goes on.
            failure_config=tune.FailureConfig(max_failures=max_failures)),
    )


def summarize(grid, search: Search, *, storage: str, name: str,
              unfinished: set[str] | None = None) -> str:
    """Write the results table, best config and best checkpoint; return the printed summary.

    ``unfinished``: the search was interrupted, these trials had not finished
    (:func:`~ray_fer.tuning.results.unfinished_trials`): the table marks them, says the
    results are partial, and no best config or checkpoint is written.
    """
    cfg = search.first
    exp = resolve(storage.rstrip("/") + "/" + name, cfg.data.endpoint)
    keys = search.space.keys
    rows = trial_rows(grid, metric=search.metric, mode=search.mode,
                      epochs=lambda values: search.trial_config(
                          values, storage="", name="").train.epochs,
                      params_of=search.space.assignment, storage=exp,
                      unfinished=unfinished or ())
    write_text(exp, "results.csv", results_csv(rows, search.metric, keys))
    targets = get_method(cfg.method).targets_note(
        read_manifest(resolve(cfg.data.uri, cfg.data.endpoint)).targets)
    on = f" on {targets}" if targets else ""
    table = results_markdown(rows, search.metric, keys)
    partial = PARTIAL_NOTE if unfinished is not None else ""
    write_text(exp, "results.md", partial + (f"Targets: {targets}.\n\n{table}" if targets
                                             else table))
    lines = [f"search {name}: {len(rows)} trials, metric {search.metric} ({search.mode}){on}",
             table]
    if unfinished is not None:
        return "\n".join([*lines, partial.strip()])
    best = rows[0] if rows and rows[0].checkpoint else None
    if best is None:
        lines.append("no trial reported a checkpoint")
        return "\n".join(lines)
    best_cfg = search.trial_config(best.config, storage=exp.child_uri("train"),
                                   name=best.trial_id)
    write_text(exp, "best_config.yaml", best_cfg.to_yaml())
    ckpt = export_checkpoint(exp, best.checkpoint)
    lines += [f"best trial {best.trial_id}: {search.metric}={best.metric:.4f} "
              f"(epoch {best.best_epoch})",
              f"best config: {exp.child_uri('best_config.yaml')}",
              f"best checkpoint: {ckpt}",
              f"ensemble of the best trials: python -m ray_fer.ensemble {exp.uri} --top 5",
              f"compare trials: tensorboard --logdir {exp.uri}"]
    return "\n".join(lines)


def warn_uncached_bytecode() -> None:
    """Tell the user, on stderr, when this machine's Python must compile torch again in
    every new trial process, and how to give it a bytecode cache."""
    missing = uncached_bytecode()
    if missing:
        import torch

        site = Path(torch.__file__).parents[1]
        print(f"note: Python has no bytecode cache for torch here ({missing[0]} is missing: "
              "PYTHONDONTWRITEBYTECODE is set or the install is read-only), so every new "
              "trial process compiles torch again (about 5 s more per trial start on an H100 "
              "machine). Build the cache once per node and keep the variable set for Ray: "
              f"export PYTHONPYCACHEPREFIX=/var/tmp/pyc; python -m compileall -q -j 0 {site}",
              file=sys.stderr)


def main(argv: list[str] | None = None, *, trial_fn: Callable[..., None] | None = None
         ) -> int:
    """``python -m ray_fer.tune``; ``trial_fn`` replaces the trial function (see
    :func:`build_tuner`)."""
    args = parser().parse_args(argv)
    name = args.name or f"{args.method}-search"
    try:
        if args.max_failures < 0:
            raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
        check_name(name)
        search = base_configs(args)
        opts = settings(args, search.space, search.max_epochs)
        from ray_fer.train.plan import check_data_files, resolve_data_uri

        # Materialise the embedded data once, in the driver, not in every trial (on a
        # cluster with S3 storage: under the experiments' storage, for every node).
        cfg = search.first
        data = resolve_data_uri(override(cfg, "run.storage", args.storage))
        exp = resolve(args.storage.rstrip("/") + "/" + name, cfg.data.endpoint)
        if args.resume:
            # Trials must continue with the settings they started with, not today's flags.
            search = stored_search(exp)
        else:
            search = replace(search, bases={m: override(c, "data.uri", data)
                                            for m, c in search.bases.items()})
        cfg = search.first
        check_data_files(cfg.data.uri, cfg.data.endpoint)
        if not args.resume:
            write_text(exp, BASE_FILE, search.bases_yaml())
            write_text(exp, SPACE_FILE, Path(search.space.source).read_text())
        # Workers read credentials from their own environment, never from a runtime env.
        stop_tune_copying_credentials()
        # Many trials' Ray Data progress bars interleave into noise; Tune's table says enough.
        connect(cfg.resources.cpus_per_worker, cfg.resources.workers,
                extra={"RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
        if in_trial(cfg):
            # The first trials' Ray Data reads start at once in workers ready for them.
            warm_workers(2 * opts["max_concurrent"], trial_runtime_env())
        warn_uncached_bytecode()
        tuner = build_tuner(search, opts, storage=args.storage, name=name, seed=args.seed,
                            resume=args.resume, max_failures=args.max_failures,
                            trial_fn=trial_fn)
    except UserError as exc:
        return print_error(exc)
    except KeyboardInterrupt:
        return interrupted(args, name, started=args.resume)
    with signals_seen() as stopped:
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stopped at once
            return interrupted(args, name, started=True)
    unfinished = unfinished_trials(exp)
    if unfinished or stopped():
        print(summarize(grid, search, storage=args.storage, name=name, unfinished=unfinished))
        return interrupted(args, name, started=True)
    print(summarize(grid, search, storage=args.storage, name=name))
    return 0 if any(r.error is None for r in grid) else 1


def interrupted(args: argparse.Namespace, name: str, *, started: bool) -> int:
    """Say on stderr, in one line, that Ctrl-C interrupted search ``name`` and how to
    resume it (``started``: it has an experiment to resume); returns the exit status."""
    if started:
        command = ["python", "-m", "ray_fer.tune", args.method,
                   *(["--space", args.space] if args.space else []),
                   "--storage", args.storage, "--name", name,
                   *(["--endpoint", args.endpoint] if args.endpoint else []), "--resume"]
        print(f"search {name!r} interrupted; resume with --resume: {shlex.join(command)}",
              file=sys.stderr)
    else:
        print(f"search {name!r} interrupted before its first trial; nothing to resume",
              file=sys.stderr)
    return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
