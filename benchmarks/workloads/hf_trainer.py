"""A tiny BERT (2 layers, width 32, built from a ``BertConfig``: nothing is
downloaded) classifying token sequences through Hugging Face's ``Trainer``.

The task is generated locally (seed 0): sequences of 24 tokens; about a
quarter of the positions hold a keyword from one of 4 groups, half of them
from the label's group; 10% of the labels are flipped. 1,600 training, 400
validation and 1,000 test rows. Baselines: ``Trainer(optimizers=(opt,
scheduler))`` on train+validation at a constant schedule (the cosine row
gives its own). onepass: ``tune(Trainer(..., eval_dataset=validation))``,
exactly the integration's default use (the recipe: lr tuned, the best weights
kept, the last quarter folded with eval batches); an ablation's settings go to
``tune(trainer, **settings)``."""
from __future__ import annotations

import functools
import time

import torch
from torch import nn

from .base import Data, Workload, baseline_optimizer, integration_loop, optimizer_overrides, set_mode
from .tokens import CLASSES, LENGTH, VOCAB, token_task


@functools.lru_cache(maxsize=1)
def load() -> Data:
    return token_task(seed=0, noise=0.1, sizes=(1600, 400, 1000))


class Logits(nn.Module):
    """The BERT classifier as ``tokens -> logits`` (the suite's evaluation)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits


def _model(seed: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=CLASSES,
                        type_vocab_size=1)
    return Logits(BertForSequenceClassification(config))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": torch.ones_like(self.x[i]), "labels": self.y[i]}


def train(workload: Workload, row: str, seed: int, steps: int, options: dict):
    from transformers import Trainer, TrainingArguments
    from onepass.integrations.transformers import optimizer_of, tune
    import tempfile
    data = workload.data
    wrapper = workload.model(seed)
    model = wrapper.model
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=workload.batch,
                                 per_device_eval_batch_size=128, learning_rate=1e-3, lr_scheduler_type="constant",
                                 seed=seed, data_seed=seed, report_to="none", save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, use_cpu=True,
                                 dataloader_num_workers=0, eval_strategy="no")
        hyper = None
        if row == "onepass":
            trainer = tune(Trainer(model=model, args=args, train_dataset=_Rows(data.x_train, data.y_train),
                                   eval_dataset=_Rows(data.x_val, data.y_val)),
                           **integration_loop(options["config"]), **optimizer_overrides(options["config"]))
        elif row == "onepass_sgd":
            raise ValueError("the HF workload has no onepass_sgd row (tune(trainer) gives AdamW)")
        else:
            x, y = (data.x_train, data.y_train) if options.get("on_train") else (data.x_trainval, data.y_trainval)
            opt, schedule = baseline_optimizer(row, model.parameters(), steps, lr=options.get("lr"),
                                               weight_decay=options.get("weight_decay", 0.0))
            scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule if schedule else lambda t: 1.0)
            trainer = Trainer(model=model, args=args, train_dataset=_Rows(x, y), optimizers=(opt, scheduler))
            set_mode(opt, True)
        start = time.perf_counter()
        finite = True
        try:
            trainer.train()
        except Exception as error:   # a diverged run: NonFiniteError from onepass, NaN checks elsewhere
            if "finite" not in str(error).lower() and "nan" not in str(error).lower():
                raise
            finite = False
        seconds = time.perf_counter() - start
        if row == "onepass":
            hyper = optimizer_of(trainer).hyperparameters
        else:
            set_mode(opt, False)
    return wrapper, seconds, finite, hyper


def workloads() -> list[Workload]:
    return [Workload(name="hf_bert", kind="classification", family="frameworks", steps=500, batch=32,
                     build_data=load, build_model=_model, train=train)]
