"""The ``onepass`` command: ``train``, ``sweep``, ``reproduce``, ``report``, ``download`` and ``demo``.

Errors the user can fix (a bad config, a missing file or dataset) print one
line ``onepass: error: ...`` to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

TRAIN_DESCRIPTION = """\
Run one algorithm on one dataset, as one run of the paper.

The configuration is built from layers, later ones winning key by key:
the -c files in order (paths, or names of shipped configs such as
uci_energy and ours_lr_momentum), then --random-init, then --seed, then each
--set. All hyperparameters are in natural units (lr 0.001, not log10).

Each run writes one folder LOG_ROOT/[GROUP/]NAME with config.yaml (the
resolved config), metrics.csv, TensorBoard events (tensorboard --logdir runs),
summary.json (the run record: status finished / diverged / failed /
interrupted, final losses and hyperparameters, training and wall-clock time)
and checkpoint.pt (every logging.checkpoint_interval
updates). A diverged run (NaN/inf loss) is recorded and exits 0.
"""

TRAIN_EPILOG = """\
shipped configs:
  datasets:   {datasets}
  algorithms: {algorithms}

config keys (section.key = default):
{schema}

examples:
  onepass train -c configs/uci_energy.yaml configs/ours_lr_momentum.yaml
  onepass train -c uci_energy random_stepped_lr --random-init 7 -g sweep1 -n seed7
  onepass train -c uci_energy ours_lr --set hyperparameters.lr=0.01 --set training.steps=500
  onepass train --resume runs/ours_lr_20260101-120000     # continue an interrupted run
  onepass train -c examples/own_model/config.yaml ours_lr_momentum   # your own data and model

your own data and model: dataset.kind / model.kind python with target
"package.module:function" and kwargs; the module must be importable (installed, on
PYTHONPATH, or in a folder the config lists in python_path). See
examples/own_model/README.md.
"""


def _add_train(subparsers) -> None:
    from onepass.experiment.config import ALGORITHMS, DATASETS, EXTRA_ALGORITHMS, describe_schema

    p = subparsers.add_parser(
        "train", help="run one algorithm on one dataset from YAML configs",
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG.format(datasets=", ".join(DATASETS),
                                   algorithms=", ".join((*ALGORITHMS, *EXTRA_ALGORITHMS)),
                                   schema=describe_schema().replace("%", "%%")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", nargs="+", metavar="FILE", default=[],
                   help="config files, e.g. a dataset then an algorithm (configs/uci_energy.yaml "
                        "configs/ours_lr.yaml, or bare names uci_energy ours_lr); later files "
                        "override earlier ones")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set hyperparameters.lr=0.001 "
                        "--set hyperparameters.momentum=0.9 --set hyperparameters.weight_decay=1e-5 "
                        "--set training.steps=500 (value parsed as YAML; repeatable; applied last)")
    p.add_argument("--random-init", type=int, metavar="SEED",
                   help="draw the paper's random initialisation for SEED: lr 10^U(-6,-1), weight "
                        "decay 10^U(-7,-2), momentum U(0,1), and for random_stepped_lr the "
                        "multiplier U(0.95,1.01); applied before --set")
    p.add_argument("--seed", type=int, help="seed of the model initialisation and batch order "
                                            "(config key seed, default 0)")
    p.add_argument("-n", "--name", help="run name (folder name; default ALGORITHM_TIMESTAMP)")
    p.add_argument("-g", "--group", help="sub-folder of the log root to put the run in")
    p.add_argument("-l", "--log-root", default="runs", type=Path,
                   help="root folder of the run folders (default ./runs)")
    p.add_argument("-S", "--save-state", type=Path, metavar="FILE",
                   help="save the final state (model, tuner, RNGs, config) to FILE when the run "
                        "finishes")
    p.add_argument("-s", "--load-state", type=Path, metavar="FILE",
                   help="load a state saved with -S (or a checkpoint.pt) and continue from it in a "
                        "new run folder; the config must match except training.steps and "
                        "logging.* (raise training.steps to train longer)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run in its own folder from RUN_DIR/checkpoint.pt "
                        "(its config.yaml is used unless -c is given; --set still applies)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow reusing a run folder whose summary.json says finished")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="dataset root (default: $ONEPASS_DATA_DIR, else ~/.cache/onepass); UCI "
                        "files are DIR/uci/NAME.txt")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where to train (default cpu; auto picks cuda when available)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads for torch (default 1: the paper's small models run fastest on "
                        "one thread, and parallel runs do not fight over cores; 0 keeps torch's "
                        "default)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_train)


SWEEP_DESCRIPTION = """\
Run every (algorithm, random initialisation) pair of one dataset config.

Initialisation i (0 <= i < N) draws the paper's random hyperparameters with
seed SEED+i and sets the config's seed (the initial weights) to SEED+i, so every
algorithm starts initialisation i from the same weights. Each run writes a
folder LOG_ROOT/ALGORITHM/init_III in the format of onepass train (its
summary.json carries init_index); LOG_ROOT/sweep.json records the sweep.

Re-running the same command continues a sweep: runs whose summary says
finished or diverged are kept; interrupted, failed, still-"running" (killed)
and missing runs are run again from scratch. A different sweep in the same
LOG_ROOT is refused.

Population mode (--population auto, the default) trains the initialisations of
an algorithm together, --population-size at a time, as one batched computation
when the model allows it (full-batch MLPs without BatchNorm: every UCI config);
each member's run folder equals the single run's (up to float rounding). Your
own data or model (kind python) trains one run per initialisation.
"""

SWEEP_EPILOG = """\
examples:
  onepass sweep -c uci_energy -a random ours_lr_momentum -N 20 -l runs/energy20 --workers 2
  onepass sweep -c uci_energy -a paper -N 200 -l runs/energy   # the 9 algorithms of the paper
  onepass sweep -c uci_energy -a ours_lr -N 8 --executor ray --address auto -l runs/ray
  onepass sweep -c examples/own_model/config.yaml -a random ours_lr_momentum -N 20 -l runs/own
      # your own data and model (examples/own_model/README.md): one run per initialisation
"""


def _add_sweep_options(p, *, dataset: bool) -> None:
    if dataset:
        p.add_argument("-c", "--config", required=True, metavar="DATASET",
                       help="dataset config (shipped name such as uci_energy, or a path)")
        p.add_argument("-a", "--algorithms", nargs="+", required=True, metavar="ALGO",
                       help="algorithm configs (shipped names or paths); 'paper' stands for the "
                            "nine algorithms of the paper's main table")
        p.add_argument("-N", "--inits", type=int, required=True,
                       help="number of random initialisations per algorithm")
        p.add_argument("-l", "--log-root", type=Path, required=True, help="the sweep folder")
        p.add_argument("--seed", type=int, default=0,
                       help="initialisation i uses seed SEED+i (default 0)")
        p.add_argument("--steps", type=int, help="training.steps of every run (default: the config's)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value of every run (as in onepass train; "
                            "recorded in the manifest)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel worker processes, one torch thread each (default: "
                        + ("1" if dataset else "2") + ")")
    p.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="local processes (default), a Ray cluster (pip install 'onepass[ray]') or "
                        "SLURM jobs through submitit (pip install 'onepass[slurm]')")
    p.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition (--executor slurm)")
    p.add_argument("--slurm-timeout", type=int, default=60, metavar="MIN",
                   help="SLURM time limit per job in minutes (default 60)")
    p.add_argument("--slurm-gpus", type=int, default=None, metavar="N",
                   help="GPUs per SLURM job (default none)")
    p.add_argument("--slurm-chunk", type=int, default=1, metavar="K",
                   help="runs per SLURM job (default 1)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance; "
                                     "'auto' joins a running one)")
    p.add_argument("--population", choices=("auto", "off"), default="auto",
                   help="train initialisations together as one population where the model allows "
                        "(default auto)")
    p.add_argument("--population-size", type=int, default=None, metavar="P",
                   help="initialisations per population (default 50)")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="dataset root (default: $ONEPASS_DATA_DIR, else ~/.cache/onepass)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where to train (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_sweep(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run every algorithm from N random initialisations",
                              description=SWEEP_DESCRIPTION, epilog=SWEEP_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_sweep_options(p, dataset=True)
    p.set_defaults(handler=_sweep)


def _add_reproduce(subparsers) -> None:
    from onepass.sweep.reproduce import EXPERIMENTS

    p = subparsers.add_parser(
        "reproduce", help="run one of the paper's experiments (sweep + report)",
        description="Run one of the paper's experiments: the sweep of its algorithms (by "
                    "default the nine single-run algorithms × 200 initialisations, 4,000 "
                    "updates each) into -l (default runs/NAME), then onepass report on it. "
                    "Re-running continues an interrupted experiment.",
        epilog="experiments: " + ", ".join(EXPERIMENTS) + "\n\nexample:\n"
               "  onepass reproduce uci_energy --inits 20 --steps 1000 --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME",
                   help="experiment: " + ", ".join(EXPERIMENTS))
    p.add_argument("--inits", type=int, help="initialisations per algorithm (default: the paper's)")
    p.add_argument("--steps", type=int, help="updates per run (default: the paper's)")
    p.add_argument("-l", "--log-root", type=Path, help="sweep folder (default runs/NAME)")
    p.add_argument("--seed", type=int, default=0, help="initialisation i uses seed SEED+i")
    _add_sweep_options(p, dataset=False)
    p.set_defaults(handler=_reproduce)


def _add_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="tables, figures and an HTML page for a sweep "
                                             "(see onepass report --help)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=lambda args: _run_report(args.args))


def _run_report(argv: list[str]) -> int:
    from onepass.analysis.report import report_main
    return int(report_main(list(argv)) or 0)


def _add_download(subparsers) -> None:
    from onepass.data.uci import UCI_DATASETS

    p = subparsers.add_parser("download", help="fetch datasets into the data directory",
                              description="Fetch datasets into the data directory.")
    p.add_argument("family", choices=("uci", "fashion_mnist", "ptb", "cifar10"),
                   help="dataset family (uci: the eight UCI sets; fashion_mnist: the four IDX "
                        "files; ptb: Penn Treebank simple-examples.tgz; cifar10: the python "
                        "pickles)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"uci only: datasets to fetch (default all: {', '.join(UCI_DATASETS)})")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="dataset root (default: $ONEPASS_DATA_DIR, else ~/.cache/onepass)")
    p.set_defaults(handler=_download)


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a short demonstration (see onepass demo --help)",
                              add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``onepass`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="onepass",
        description="Tune an optimiser's hyperparameters during one training run "
                    "(Clarke et al., ICLR 2022).")
    from onepass import __version__
    parser.add_argument("--version", action="version", version=f"onepass {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(subparsers)
    _add_sweep(subparsers)
    _add_reproduce(subparsers)
    _add_report(subparsers)
    _add_download(subparsers)
    _add_demo(subparsers)
    from onepass.search.cli import add_search_commands  # bayesopt, asha, pbt
    add_search_commands(subparsers)
    return parser


class UsageError(Exception):
    """An error reported as one line, exit status 2."""


def _run_dir(args, config) -> Path:
    if args.resume is not None:
        return args.resume
    name = args.name or f"{config['algorithm']['name']}_{datetime.now():%Y%m%d-%H%M%S}"
    if "/" in name or name in ("", ".", ".."):
        raise UsageError(f"invalid run name {name!r}")
    root = args.log_root / args.group if args.group else args.log_root
    return root / name


def _train(args) -> int:
    from onepass.experiment.config import load_config
    from onepass.experiment.logging import CHECKPOINT, CONFIG
    from onepass.experiment.record import find_record
    from onepass.experiment.run import run_training

    if args.resume is not None and args.load_state is not None:
        raise UsageError("give either --resume RUN_DIR or -s FILE, not both")
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.insert(0, f"seed={args.seed}")
    files = list(args.config)
    resume_from = None
    if args.resume is not None:
        resume_from = args.resume / CHECKPOINT
        if not resume_from.is_file():
            raise UsageError(f"cannot resume {args.resume}: no {CHECKPOINT} there "
                             "(no checkpoint was written before it stopped)")
        if not files:
            if not (args.resume / CONFIG).is_file():
                raise UsageError(f"cannot resume {args.resume}: no {CONFIG} there; give -c")
            files = [args.resume / CONFIG]
    elif args.load_state is not None:
        if not args.load_state.is_file():
            raise UsageError(f"state file {args.load_state} not found")
        resume_from = args.load_state
    if not files:
        raise UsageError("give config files with -c (e.g. -c uci_energy ours_lr) or --resume RUN_DIR")
    config = load_config(files, overrides, random_init=args.random_init)
    run_dir = _run_dir(args, config)
    previous = find_record(run_dir)
    if previous is not None and previous.status == "finished" and not args.overwrite:
        raise UsageError(f"{run_dir} holds a finished run; choose another -n, or pass --overwrite")
    if args.resume is None and args.load_state is None and run_dir.exists() and any(run_dir.iterdir()) \
            and not args.overwrite and previous is None:
        raise UsageError(f"{run_dir} exists and is not empty; choose another -n, or pass --overwrite")
    if args.threads < 0:
        raise UsageError(f"--threads must be ≥ 0, got {args.threads}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from onepass.experiment.tasks import check_data
    check_data(config, args.data_dir)  # raises, saying where it looked
    # run_training loads the data before it creates the folder: a missing or corrupt
    # file raises FileNotFoundError / ValueError, reported by main() as one line.
    try:
        summary = run_training(config, run_dir, data_dir=args.data_dir, device=args.device,
                               resume_from=resume_from, save_state_to=args.save_state,
                               progress=not args.no_progress)
    except Exception as error:
        if getattr(error, "run_status", None) != "failed":
            raise  # raised before training started: reported as a usage error
        import traceback
        traceback.print_exc()
        print(f"onepass: run failed ({type(error).__name__}: {error}); see {run_dir}/summary.json",
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"onepass: interrupted; continue with: onepass train --resume {run_dir}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    final = summary["final"]
    line = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if v is not None)
    print(f"onepass: {summary['status']} after {summary['steps']} updates in "
          f"{summary['train_seconds']:.1f} s of training steps ({summary['wall_time_s']:.1f} s "
          f"wall): {line}; run folder {run_dir}", file=sys.stderr)
    return EXIT_OK


def _sweep_common(args) -> dict:
    slurm = None
    if args.executor == "slurm":
        slurm = dict(partition=args.slurm_partition, timeout_min=args.slurm_timeout,
                     gpus_per_node=args.slurm_gpus, chunk_size=args.slurm_chunk)
    return dict(workers=args.workers, executor=args.executor, address=args.address,
                population=args.population, data_dir=args.data_dir, device=args.device,
                progress=not args.no_progress, slurm=slurm)


def _check_ray(args) -> None:
    """The optional extra of the chosen executor, or a one-line usage error."""
    from onepass.sweep.executors import EXECUTORS
    try:
        EXECUTORS[args.executor].check_available()
    except ImportError as error:
        raise UsageError(str(error)) from None


def _print_outcome(outcome) -> int:
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items())
    print(f"onepass: sweep {outcome.root}: {outcome.total} runs ({counts}); ran {outcome.ran}, "
          f"{outcome.skipped} were already done", file=sys.stderr)
    for result in outcome.failed[:10]:
        print(f"onepass: {result.algorithm} init {result.init_index}: {result.status}"
              + (f" ({result.error})" if result.error else ""), file=sys.stderr)
    if outcome.failed:
        print(f"onepass: {len(outcome.failed)} runs did not finish; rerun the same command to "
              "redo them", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _sweep(args) -> int:
    from onepass.sweep import DEFAULT_POPULATION_SIZE, PAPER_ALGORITHMS, SweepError, run_sweep

    _check_ray(args)
    algorithms = [a for name in args.algorithms
                  for a in (PAPER_ALGORITHMS if name == "paper" else [name])]
    options = _sweep_common(args)
    options["workers"] = options["workers"] or 1
    try:
        outcome = run_sweep(args.config, algorithms, args.inits, args.log_root, seed=args.seed,
                            steps=args.steps, overrides=args.overrides,
                            population_size=args.population_size or DEFAULT_POPULATION_SIZE,
                            **options)
    except SweepError as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        print("onepass: sweep interrupted; rerun the same command to continue it", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _print_outcome(outcome)


def _reproduce(args) -> int:
    from onepass.sweep import SweepError
    from onepass.sweep.reproduce import reproduce

    _check_ray(args)
    options = _sweep_common(args)
    options["workers"] = options["workers"] or 2
    try:
        outcome, written = reproduce(args.name, root=args.log_root, inits=args.inits,
                                     steps=args.steps, seed=args.seed,
                                     population_size=args.population_size, **options)
    except SweepError as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        print("onepass: interrupted; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    status = _print_outcome(outcome)
    if "table.md" in written:
        print(written["table.md"].read_text())
    for path in written.values():
        print(f"wrote {path}", file=sys.stderr)
    return status


def _download(args) -> int:
    if args.family == "uci":
        from onepass.data.uci import download_uci
        for path in download_uci(args.names or None, args.data_dir):
            print(path)
        return EXIT_OK
    if args.names:
        raise UsageError(f"download {args.family} takes no dataset names (got {' '.join(args.names)})")
    if args.family == "fashion_mnist":
        from onepass.data.fashion_mnist import download_fashion_mnist as fetch
    elif args.family == "ptb":
        from onepass.data.ptb import download_ptb as fetch
    else:
        from onepass.data.cifar10 import download_cifar10 as fetch
    print(fetch(args.data_dir))
    return EXIT_OK


def _demo(args) -> int:
    return _run_demo(args.args)


def _run_demo(argv: list[str]) -> int:
    from onepass import demo
    return int(demo.main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onepass`` command; returns the exit status."""
    from onepass.experiment.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # everything after "demo" is the demo's own (argparse REMAINDER
        return _run_demo(argv[1:])  # would stop at a leading --option)
    if argv[:1] == ["report"]:
        return _run_report(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, ConfigError, FileNotFoundError) as error:
        print(f"onepass: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as error:
        # Checked before any training (bad checkpoint, unavailable device, corrupt data).
        print(f"onepass: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE


def _one_line(error: BaseException) -> str:
    text = str(error) if not isinstance(error, FileNotFoundError) or error.filename is None \
        else f"{error.strerror or 'not found'}: {error.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
