"""Check the three large experiments on a CUDA GPU, with synthetic data of the real shapes.

For Fashion-MNIST (MLP 784-50-10, batch 50), Penn Treebank (2-layer LSTM
650/650, 10,000 words, 40 × 70 tokens, clipping 0.25) and CIFAR-10
(ResNet-18, batch 100) it runs ``--updates`` weight updates (default 300) with
Ours (WD+LR+M) (Neumann K=5, a hyperstep every 10 updates) on random data
(no dataset download), and prints throughput (updates/s) and peak GPU memory.
Then it takes one Neumann K=3 hyperstep through the full-size LSTM on CUDA
(second-order terms through the LSTM: cuDNN is switched off for it by
``LSTMLanguageModel``) and checks the hypergradient is finite. Exit status 0
when everything passed, 1 when a check failed, 2 when there is no GPU::

    python scripts/gpu_check.py            # about a minute on an H100
    python scripts/gpu_check.py --updates 100
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from full_size import EXPERIMENTS, make_tuner, setup  # noqa: E402


def throughput(name: str, device, updates: int, small: bool) -> dict:
    model, batch_loss, batch, val_batch, clip = setup(name, device, small=small)
    tuner = make_tuner(model, batch_loss, clip)
    tuner.step(batch(), val_batch=val_batch)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    hypersteps = 0
    for _ in range(updates):
        result = tuner.step(batch(), val_batch=val_batch)
        if result.hypergradient is not None:
            hypersteps += 1
            for grads in result.hypergradient.values():
                if not all(torch.isfinite(g).all() for g in grads):
                    raise FloatingPointError(f"{name}: non-finite hypergradient")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    loss = result.loss.item()
    if not math.isfinite(loss):
        raise FloatingPointError(f"{name}: non-finite training loss {loss}")
    return {"updates_per_s": updates / seconds, "peak_gib": peak, "hypersteps": hypersteps,
            "final_loss": loss, "hyperparameters": {k: float(v) for k, v in tuner.hyperparameters.items()}}


def lstm_hyperstep(device, small: bool) -> dict:
    """One Neumann K=3 hyperstep through the (full-size) LSTM."""
    model, batch_loss, batch, val_batch, clip = setup("penn_treebank", device, small=small)
    tuner = make_tuner(model, batch_loss, clip, neumann_terms=3)
    for _ in range(tuner.update_interval - 1):
        tuner.step(batch())
    start = time.perf_counter()
    result = tuner.step(batch(), val_batch=val_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    grads = {k: [g.item() for g in v] for k, v in (result.hypergradient or {}).items()}
    finite = bool(grads) and all(math.isfinite(x) for v in grads.values() for x in v)
    return {"seconds": time.perf_counter() - start, "hypergradient": grads, "finite": finite}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=300, help="updates per experiment (default 300)")
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on the CPU when there is no GPU (tests this script; no GPU check)")
    parser.add_argument("--small", action="store_true", help="tiny models (tests this script)")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    elif args.allow_cpu:
        device = torch.device("cpu")
        print("no GPU: running on the CPU (--allow-cpu); this checks the script, not the GPU path")
    else:
        print("gpu_check: no CUDA GPU is available (torch.cuda.is_available() is False); run this "
              "on a machine with a GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    ok = True
    print(f"{'experiment':15s} {'updates/s':>10s} {'peak GiB':>9s} {'hypersteps':>10s}  final loss")
    for name in args.only:
        try:
            r = throughput(name, device, args.updates, args.small)
        except Exception as error:  # noqa: BLE001  (report every experiment)
            ok = False
            print(f"{name:15s} FAILED: {type(error).__name__}: {error}")
            continue
        print(f"{name:15s} {r['updates_per_s']:10.2f} {r['peak_gib']:9.2f} {r['hypersteps']:10d}  "
              f"{r['final_loss']:.4g}  {r['hyperparameters']}", flush=True)
    try:
        h = lstm_hyperstep(device, args.small)
        ok = ok and h["finite"]
        print(f"LSTM Neumann K=3 hyperstep on {device.type}: {h['seconds']:.2f} s, hypergradient "
              f"{h['hypergradient']} -> {'finite' if h['finite'] else 'NOT FINITE'}")
    except Exception as error:  # noqa: BLE001
        ok = False
        print(f"LSTM Neumann K=3 hyperstep FAILED: {type(error).__name__}: {error}")
    print("gpu_check: all checks passed" if ok else "gpu_check: SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
