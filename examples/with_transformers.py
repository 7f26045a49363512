"""A Hugging Face ``Trainer`` whose AdamW tunes its own learning rate while it
trains, with onepass's recipe (onepass.integrations.transformers).

Compared with the same script on the Trainer's own AdamW, two lines change;
they are marked ``# onepass:``:

1. ``from onepass.integrations.transformers import tune``;
2. ``trainer = tune(Trainer(...))``: the Trainer now trains with
   ``onepass.optim.AdamW`` (starting from ``args.learning_rate`` and
   ``args.weight_decay``; ``tune(..., tune=("lr", "weight_decay"))`` would
   tune the weight decay too), takes the validation loss of each
   hyperparameter step from its eval dataset (the model's own
   ``outputs.loss``, so the eval rows carry labels), keeps the weights of the
   lowest one, trains the last quarter frozen with the eval batches folded
   in, and logs the tuned values (``onepass/lr/group0``, ...)
   with its own logs: ``trainer.state.log_history`` and every ``report_to``
   logger (``--tensorboard`` writes TensorBoard events under the output folder).

The Trainer's schedule (here constant after a warm-up) still applies: the
rate in use, ``lr/group0``, is the learned rate times the schedule (with a
schedule that decays to 0, such as ``linear``, it ends at 0). Model: a tiny GPT-2 built from a config
(2 layers, width 32, nothing downloaded) on synthetic token sequences
(counting mod 64 with a random start and stride). The last line printed is
one JSON object::

    {"hyperparameters": {"lr/group0": ..., "lr_in_use/group0": ..., ...}, "val_loss": ...}
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.utils import logging

from onepass.integrations.transformers import optimizer_of, tune   # onepass: the helper

VOCAB, LENGTH = 64, 16


def sequences(n: int, seed: int) -> list[dict]:
    """Token rows counting mod VOCAB from a random start with stride 1 or 2 (labels = inputs)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 3, (n, 1), generator=g)
    ids = (start + stride * torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": row, "labels": row} for row in ids]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="weight updates (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", help="the Trainer's output folder (default: a temporary one)")
    parser.add_argument("--tensorboard", action="store_true", help="report_to=['tensorboard']")
    args = parser.parse_args(argv)
    logging.set_verbosity_error()

    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=args.output_dir or scratch, max_steps=args.steps, per_device_train_batch_size=16,
            per_device_eval_batch_size=32, learning_rate=1e-3, weight_decay=1e-2, warmup_steps=args.steps // 10,
            lr_scheduler_type="constant_with_warmup", logging_steps=max(1, args.steps // 5), save_strategy="no",
            report_to=["tensorboard"] if args.tensorboard else [], use_cpu=True, seed=args.seed,
            disable_tqdm=True)
        trainer = tune(Trainer(model=model, args=training, train_dataset=sequences(512, args.seed + 1),
                               eval_dataset=sequences(64, args.seed + 2)))          # onepass: tune(...)
        trainer.train()
        val_loss = trainer.evaluate()["eval_loss"]
    print(json.dumps({"hyperparameters": optimizer_of(trainer).hyperparameters, "val_loss": val_loss}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
