"""The ``onepass bayesopt``, ``onepass asha`` and ``onepass pbt`` subcommands.

Added to the ``onepass`` parser by :func:`add_search_commands`. Without the
optional extra a command prints one line naming it and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2

BAYESOPT_DESCRIPTION = """\
Bayesian optimisation of (log10 lr in [-6,-1], log10 weight decay in [-7,-2],
momentum in (0,1)) as in the paper: INIT_POINTS random then ITERATIONS guided
evaluations (5 + 25), each a full training run of the base algorithm scored by
its final validation loss on the whole validation set (diverged runs score a
fixed bad value). Evaluations are run folders LOG_ROOT/[GROUP/]NAME/eval_<iii>/
(algorithm bayesopt) beside study.json. Re-running the same command continues
the study from the evaluations on disk. Needs: pip install 'onepass[bayesopt]'.
"""

RAY_DESCRIPTION = """\
{name} on Ray Tune over the protocol's ranges (lr 10^U(-6,-1), weight decay
10^U(-7,-2), momentum U(0,1)); metric: validation loss on the whole validation
set (minimised), reported once per window of --report-every updates; at most
--max-steps (4,000) updates per trial.{extra} Each trial is a run folder
LOG_ROOT/[GROUP/]NAME/trial_<iii>/ (algorithm {method}) beside study.json.
Trials checkpoint every --checkpoint-every reports; re-running the same
command after an interruption (even kill -9) continues the study: finished
trials are kept, unfinished ones continue from their last checkpoint; other
settings in the same folder are refused. Needs: pip install 'onepass[ray]'.
"""


def _common(p, name: str) -> None:
    p.add_argument("-c", "--config", default="uci_energy", metavar="DATASET",
                   help="dataset config (default uci_energy)")
    p.add_argument("--base", default="random_training_set_only",
                   choices=("random_training_set_only", "ours_lr_momentum"),
                   help="algorithm run in each trial (default random_training_set_only; "
                        "ours_lr_momentum runs the paper's method inside the search)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of every model "
                                                       "initialisation (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of every trial (e.g. training.steps=500)")
    p.add_argument("-l", "--log-root", default="runs", type=Path,
                   help="root folder of the run folders (default ./runs)")
    p.add_argument("-g", "--group", help="sub-folder of the log root")
    p.add_argument("-n", "--name", default=name, help=f"study folder name (default {name})")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="dataset root")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))


def add_search_commands(subparsers) -> None:
    """Add ``bayesopt``, ``asha`` and ``pbt`` to the ``onepass`` subparsers."""
    p = subparsers.add_parser("bayesopt", help="Bayesian-optimisation baseline (GP, 5+25 runs)",
                              description=BAYESOPT_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, "bayesopt")
    p.add_argument("--init-points", type=int, default=5, help="random evaluations (default 5)")
    p.add_argument("--iterations", type=int, default=25, help="guided evaluations (default 25)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(handler=_bayesopt)
    for method, name, extra in (
            ("asha", "ASHA", " ASHAScheduler(grace period --grace-period updates, reduction "
                             "factor 4); --num-samples trials (default 100)."),
            ("pbt", "PBT", " PopulationBasedTraining perturbing every --perturbation-interval "
                           "(100) updates, momentum clipped to [0, 1-1e-6]; trials checkpoint "
                           "model, optimiser state and hyperparameters; population "
                           "--num-samples (default 20).")):
        p = subparsers.add_parser(method, help=f"{name} baseline on Ray Tune",
                                  description=RAY_DESCRIPTION.format(name=name, extra=extra,
                                                                     method=method),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p, method)
        p.add_argument("--num-samples", type=int, help="trials / population size")
        p.add_argument("--max-steps", type=int, default=4000, help="updates per trial (4000)")
        p.add_argument("--report-every", type=int, default=10,
                       help="updates between reports (default 10: one per window)")
        if method == "asha":
            p.add_argument("--grace-period", type=int, default=10, help="updates (default 10)")
            p.add_argument("--reduction-factor", type=float, default=4)
        else:
            p.add_argument("--perturbation-interval", type=int, default=100,
                           help="updates between perturbations (default 100)")
            p.add_argument("--synch", action="store_true", help="synchronous PBT")
        p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
        p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
        p.add_argument("--cpus-per-trial", type=float, default=1.0)
        p.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                       help="reports between a trial's checkpoints (default 50)")
        p.set_defaults(handler=_ray, method=method)


def _study_dir(args) -> Path:
    if "/" in args.name or args.name in ("", ".", ".."):
        raise ValueError(f"invalid study name {args.name!r}")
    root = args.log_root / args.group if args.group else args.log_root
    return root / args.name


def _missing(error) -> int:
    print(f"onepass: error: {error}", file=sys.stderr)
    return EXIT_USAGE


def _bayesopt(args) -> int:
    from onepass.search import MissingExtra
    try:
        from onepass.search.bayesopt import run_bayesopt
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        study = run_bayesopt([args.config], _study_dir(args), base=args.base,
                             init_points=args.init_points, iterations=args.iterations,
                             seed=args.seed, overrides=args.overrides, data_dir=args.data_dir,
                             device=args.device, log=lambda t: print(f"onepass: {t}", file=sys.stderr))
    except MissingExtra as error:
        return _missing(error)
    _print_best(study, "evaluation")
    return EXIT_OK


def _ray(args) -> int:
    from onepass.search import MissingExtra
    try:
        from onepass.search.ray_tune import run_ray_search
        extra = ({"grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
                 if args.method == "asha" else
                 {"perturbation_interval": args.perturbation_interval, "synch": args.synch})
        study = run_ray_search(args.method, args.config, _study_dir(args), base=args.base,
                               num_samples=args.num_samples, max_steps=args.max_steps,
                               report_every=args.report_every, seed=args.seed,
                               overrides=args.overrides, data_dir=args.data_dir, device=args.device,
                               address=args.address, num_cpus=args.num_cpus,
                               cpus_per_trial=args.cpus_per_trial,
                               checkpoint_every=args.checkpoint_every,
                               log=lambda t: print(f"onepass: {t}", file=sys.stderr), **extra)
    except MissingExtra as error:
        return _missing(error)
    _print_best(study, "trial")
    return EXIT_OK if not study.get("errors") else 1


def _print_best(study, what) -> None:
    best = study.get("best")
    if best is None:
        print(f"onepass: no {what} finished", file=sys.stderr)
        return
    print(f"onepass: best {what} {best['run_dir']}: val_loss {best['val_loss']}, test_loss "
          f"{best['test_loss']}, test_loss_unnormalised {best['test_loss_unnormalised']}; "
          f"{study['completed']} {what}s", file=sys.stderr)


__all__ = ["add_search_commands"]
