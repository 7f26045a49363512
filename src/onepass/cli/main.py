"""The ``onepass`` command: ``train``, ``download`` and ``demo``.

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
summary.json (status finished / diverged / failed / interrupted, final losses
and hyperparameters) and checkpoint.pt (every logging.checkpoint_interval
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
"""


def _add_train(subparsers) -> None:
    from onepass.experiment.config import ALGORITHMS, DATASETS, describe_schema

    p = subparsers.add_parser(
        "train", help="run one algorithm on one dataset from YAML configs",
        description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EPILOG.format(datasets=", ".join(DATASETS), algorithms=", ".join(ALGORITHMS),
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


def _add_download(subparsers) -> None:
    from onepass.data.uci import UCI_DATASETS

    p = subparsers.add_parser("download", help="fetch datasets into the data directory",
                              description="Fetch datasets into the data directory.")
    p.add_argument("family", choices=("uci",), help="dataset family (uci: the eight UCI sets)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"datasets to fetch (default all: {', '.join(UCI_DATASETS)})")
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
    _add_download(subparsers)
    _add_demo(subparsers)
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
    from onepass.experiment.logging import CHECKPOINT, CONFIG, read_summary
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
    previous = read_summary(run_dir)
    if previous is not None and previous.get("status") == "finished" and not args.overwrite:
        raise UsageError(f"{run_dir} holds a finished run; choose another -n, or pass --overwrite")
    if args.resume is None and args.load_state is None and run_dir.exists() and any(run_dir.iterdir()) \
            and not args.overwrite and previous is None:
        raise UsageError(f"{run_dir} exists and is not empty; choose another -n, or pass --overwrite")
    if args.threads < 0:
        raise UsageError(f"--threads must be ≥ 0, got {args.threads}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from onepass.data.uci import load_uci, uci_path
    if not uci_path(config["dataset"]["name"], args.data_dir).is_file():
        load_uci(config["dataset"]["name"], args.data_dir)  # raises, saying where it looked
    print(f"onepass: run folder {run_dir}", file=sys.stderr)
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
          f"{summary['wall_time_s']:.1f} s: {line}", file=sys.stderr)
    return EXIT_OK


def _download(args) -> int:
    from onepass.data.uci import download_uci
    for path in download_uci(args.names or None, args.data_dir):
        print(path)
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
