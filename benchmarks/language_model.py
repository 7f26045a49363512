"""Overhead on a today-sized model: a GPT-2-style language model built from a
``transformers`` config (6 layers, width 384, context 256, an 8k vocabulary,
random tokens), ``torch.optim.AdamW`` against ``onepass.optim.AdamW`` tuning
the learning rate and weight decay, as a ratio of wall time over the same
updates. The two are interleaved update by update (a drift in machine speed
hits both alike); attention is the eager implementation, whose double
backward exists on CPU.

    python benchmarks/language_model.py [--updates 50] [--batch 4] [--threads 1] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import onepass.optim

TARGET = 1.47   # issue #18: no worse than the figure before the core redesign


def model(seed: int, n_layer: int = 6, n_embd: int = 384, n_head: int = 6, n_positions: int = 256,
          vocab_size: int = 8192):
    """The GPT-2-style LM (the sizes: this benchmark's; ``full_size.py`` also builds smaller ones)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                        vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4, help="sequences of 256 tokens per update")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--update-interval", type=int, default=None,
                        help="updates per hyperparameter step (default: the recipe's)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8192, (args.updates + 1, args.batch, 256), generator=g)
    val = torch.randint(0, 8192, (args.batch, 256), generator=g)
    plain_model, tuned_model = model(0), model(0)
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-3, weight_decay=1e-2)
    tuned = onepass.optim.AdamW(tuned_model.parameters(), lr=1e-3, weight_decay=1e-2,
                                tune=("lr", "weight_decay"), update_interval=args.update_interval,
                                val_loss=lambda: tuned_model(val, labels=val).loss)
    seconds = {"adamw": [], "onepass": []}
    for t in range(args.updates):
        order = (("adamw", plain_model, plain), ("onepass", tuned_model, tuned))
        for name, net, opt in (order if t % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            opt.zero_grad()
            graph = getattr(opt, "needs_graph", False)
            net(tokens[t], labels=tokens[t]).loss.backward(create_graph=graph)
            opt.step()
            seconds[name].append(time.perf_counter() - start)
    total = {name: sum(v) for name, v in seconds.items()}
    ratio = total["onepass"] / total["adamw"]
    print(f"GPT-2 style LM (6 layers, width 384, context 256, vocab 8192, batch {args.batch}), "
          f"{args.updates} updates, {torch.get_num_threads()} thread(s)")
    print(f"torch.optim.AdamW   {total['adamw']:.1f} s")
    print(f"onepass.optim.AdamW {total['onepass']:.1f} s  (lr and weight decay tuned, "
          f"{args.updates // tuned.tuner.update_interval} hyperparameter steps)")
    print(f"ratio {ratio:.2f}; target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}; "
          f"learned {tuned.hyperparameters['lr/group0']:.3g} lr, "
          f"{tuned.hyperparameters['weight_decay/group0']:.3g} weight decay")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": seconds, "ratio": ratio, "hyperparameters": tuned.hyperparameters}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
