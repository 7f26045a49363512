"""Hugging Face ``transformers``: one line makes a ``Trainer`` train with the
recipe of :class:`onepass.optim.AdamW` (its learning rate tuned, the loop step
included)::

    from onepass.integrations.transformers import tune

    trainer = tune(Trainer(model=model, args=args, train_dataset=train, eval_dataset=val))
    trainer.train()

:func:`tune` works on any ``Trainer`` (subclasses included) before
``train()``; what it sets up:

* **The optimizer.** ``onepass.optim.AdamW`` over the model's trainable
  parameters, from ``args.learning_rate``, ``args.adam_beta1/2``,
  ``args.adam_epsilon`` and ``args.weight_decay`` (0.01, ``torch.optim.AdamW``'s
  default, when that is 0); it tunes ``lr``, as ``onepass.optim.AdamW`` does
  by default (``tune(trainer, tune=("lr", "weight_decay"))`` tunes both; a
  tuned weight decay must start above 0). Keyword arguments of
  :func:`tune` go to ``AdamW`` (``update_interval=``, ``hyper_lr=``, ...; its
  recipe's defaults otherwise). All
  parameters are one group: onepass tunes one weight decay for all of them,
  so the Trainer's exemption of biases and LayerNorm weights does not apply.
* **backward.** ``Trainer.training_step`` calls
  ``self.accelerator.backward(loss)``; that call gets
  ``create_graph=optimizer.needs_graph``: one of the two methods :func:`tune` wraps (``Trainer.training_step``, for the fold, below).
  The rest is a ``TrainerCallback`` (first in the Trainer's list): from
  ``on_step_begin`` to ``on_pre_optimizer_step`` of those updates,
  ``scaled_dot_product_attention`` takes its math kernel (``sdpa``'s fused
  kernels have no double backward) and a compiled model
  (``torch_compile=True``) runs its eager code (``torch.compiler``'s
  ``"force_eager"`` stance: compiled graphs have no double backward); the
  other updates keep both. Under DDP those updates run in the model's
  ``no_sync()``: DDP all-reduces first-order gradients only, and the
  optimizer averages the gradient, its Hessian-vector products and the
  validation gradient itself.
* **Validation loss.** On the last update of each window the optimizer asks
  for the validation loss at the new weights: the next batch of
  ``trainer.get_eval_dataloader()`` (the eval dataset with the Trainer's
  collator, cycled; the first one if ``eval_dataset`` is a dict), moved to
  the device with accelerate's ``send_to_device`` (not the Trainer's
  ``_prepare_inputs``, which TRL-style subclasses override for their training
  batches), fed to the model in ``eval()`` mode, and its own ``outputs.loss``.
  The eval batches must carry labels.
* **Logging.** Every training log of the Trainer (every ``logging_steps``; the callback's ``on_log``) gets
  the tuned values, ``onepass/lr/group0`` (the learned value), ``onepass/lr_in_use/group0`` (the rate in use: learned ×
  scheduled) and ``onepass/weight_decay/group0``, and ``onepass/val_loss``
  (that of the last hyperparameter step), so they are in ``trainer.state.log_history`` and
  every ``report_to`` logger (TensorBoard, W&B, ...). ``learning_rate`` stays
  the Trainer's: the schedule only.
* **The loop step** (the recipe's, :class:`onepass.optim.Fold`; ``fold=`` and
  ``keep_best=`` of :func:`tune`): the weights (and buffers) of the lowest
  validation loss seen while tuning are kept; after 75% of ``max_steps`` they
  are restored and the optimizer frozen (``freeze()``: the Trainer's schedule
  still drives it), and from then on ``training_step`` (the second method
  :func:`tune` wraps) trains on an eval batch instead of the training batch
  for ``len(eval) / (len(train) + len(eval))`` of the batches, as loader
  batches, spread by a fixed rule (:class:`~._common.FoldBatches`), so the
  eval data is trained on as a plain loop's fold draws from train+validation.
* **LR scheduler.** The Trainer's own (``lr_scheduler_type``, warm-up) sets the
  schedule; the learned rate multiplies it (see :mod:`onepass.optim`).
* **Checkpoints.** The optimizer's ``state_dict`` (``optimizer.pt``) carries
  the tuned values, their optimiser's state, the position in the eval
  data and the fold's state (best weights, batches drawn), so
  ``trainer.train(resume_from_checkpoint=...)`` resumes the tuned run exactly,
  inside the fold too.

Works: ``gradient_accumulation_steps``, ``max_grad_norm`` (clipping by norm is
what the Trainer does; the hyperparameter step sees it), ``bf16``, ``fp16``
(the accelerator's ``GradScaler`` is given to the optimizer; with either, a
non-finite hypergradient skips that hyperparameter step, counted in
``skipped_hypersteps``, as under AMP in a plain loop), DDP.
Refused with one line: DeepSpeed, an optimizer already given to the Trainer,
no eval dataset.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Mapping

import torch

from ..optim import AdamW, Fold
from ._common import FoldBatches, cycled, differentiated_forward, eval_mode, own_randomness, tuned_values

try:
    import transformers
    from accelerate.utils import send_to_device
except ImportError as error:   # pragma: no cover - the extra is installed in CI
    raise ImportError("onepass.integrations.transformers needs transformers: "
                      "pip install 'onepass[transformers]'") from error

__all__ = ["tune", "optimizer_of", "TrainerAdamW"]

_DEFAULT_WEIGHT_DECAY = 1e-2


def tune(trainer: "transformers.Trainer", eval_dataset: Any = None, prefix: str = "onepass/",
         fold: float | None = None, keep_best: bool | None = None, **adamw) -> "transformers.Trainer":
    """Make ``trainer`` train with :class:`onepass.optim.AdamW`, tuning its
    learning rate, with the recipe's loop step (see the module's docs); returns ``trainer``.

    Args:
        trainer: a ``transformers.Trainer`` that has not built its optimizer.
        eval_dataset: the validation data of the hyperparameter steps (a
            dataset, or a key of a dict ``eval_dataset``). Default: the
            Trainer's ``eval_dataset``.
        prefix: prefix of the logged names.
        fold: the share of the updates, at the end, trained with the
            hyperparameters frozen and eval batches mixed into the training
            batches (:class:`onepass.optim.Fold`). Default: the recipe's
            (0.25); 0 turns it off.
        keep_best: restore the weights of the lowest validation loss seen
            while tuning, at the fold (at the end if training ends before it). Default: the
            recipe's (on).
        **adamw: arguments of :class:`onepass.optim.AdamW`, overriding those
            read from ``trainer.args`` (``tune=("lr", "weight_decay")`` tunes
            the weight decay too).
    """
    if not isinstance(trainer, transformers.Trainer):
        raise TypeError(f"tune() takes a transformers.Trainer, got {type(trainer).__name__}")
    if trainer.optimizer is not None:
        raise ValueError("tune(trainer) builds the optimizer itself: do not pass optimizers= to the Trainer "
                         "(give AdamW's settings to tune(trainer, ...) instead)")
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise ValueError("tune(trainer): DeepSpeed owns backward and the optimizer; onepass does not support it")
    if eval_dataset is None and trainer.eval_dataset is None:
        raise ValueError("tune(trainer): the Trainer has no eval_dataset; the hyperparameter steps need "
                         "validation batches (Trainer(eval_dataset=...) or tune(trainer, eval_dataset=...))")
    if isinstance(eval_dataset, str) and not isinstance(trainer.eval_dataset, Mapping):
        raise ValueError(f"tune(trainer, eval_dataset={eval_dataset!r}): the Trainer's eval_dataset is not a dict")
    if eval_dataset is None and isinstance(trainer.eval_dataset, Mapping):
        eval_dataset = next(iter(trainer.eval_dataset))
    if fold is not None and not 0.0 <= fold < 1.0:
        raise ValueError(f"tune(trainer, fold={fold}): the fold is a share of the updates in [0, 1)")

    args = trainer.args
    settings = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                    weight_decay=args.weight_decay if args.weight_decay > 0 else _DEFAULT_WEIGHT_DECAY)
    if args.bf16 or args.fp16:   # autocast runs inside the model's forward, where the optimizer cannot see it
        settings["skip_non_finite"] = True
    settings.update(adamw)
    validation = _Validation(trainer, eval_dataset)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = TrainerAdamW(params, val_loss=validation, grad_scaler=trainer.accelerator.scaler, **settings)
    optimizer.validation = validation
    trainer.optimizer = optimizer

    backward = trainer.accelerator.backward

    @functools.wraps(backward)
    def backward_with_graph(loss, **kwargs):
        if optimizer.needs_graph:
            kwargs["create_graph"] = True
        return backward(loss, **kwargs)
    trainer.accelerator.backward = backward_with_graph   # one of the two methods tune() wraps
    tuning = _Tuning(trainer, optimizer, validation, prefix, fold, keep_best)
    training_step = trainer.training_step

    @functools.wraps(training_step)
    def training_step_of_the_fold(model, inputs, num_items_in_batch=None, *args, **kwargs):
        batch = tuning.fold_batch()
        if batch is not None:   # counted over the eval batch's own items
            inputs, num_items_in_batch = batch, None
        return training_step(model, inputs, num_items_in_batch, *args, **kwargs)
    trainer.training_step = training_step_of_the_fold
    # First among the callbacks: the report_to loggers' on_log then see the tuned values.
    trainer.callback_handler.callbacks.insert(0, tuning)
    return trainer


def optimizer_of(trainer: "transformers.Trainer") -> "TrainerAdamW":
    """The :class:`onepass.optim.AdamW` that :func:`tune` gave ``trainer`` (during
    training the Trainer holds it inside accelerate's wrapper), e.g. for
    ``optimizer_of(trainer).hyperparameters``."""
    optimizer = trainer.optimizer
    while optimizer is not None and not isinstance(optimizer, TrainerAdamW):
        optimizer = getattr(optimizer, "optimizer", None)
    if optimizer is None:
        raise ValueError("optimizer_of(trainer): this Trainer was not prepared with onepass's tune(trainer)")
    return optimizer


class TrainerAdamW(AdamW):
    """:class:`onepass.optim.AdamW` whose ``state_dict`` also holds the position
    in the eval data and the fold's state (what :func:`tune` gives the Trainer)."""

    validation: "_Validation | None" = None
    fold: "Fold | None" = None
    fold_batches: "FoldBatches | None" = None
    fold_restored: "dict | None" = None   # a checkpoint's fold state, until on_train_begin builds the fold

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.validation is not None:
            state["onepass_eval_batches"] = self.validation.taken
        if self.fold is not None:
            state["onepass_fold"] = {"fold": self.fold.state_dict(),
                                     "drawn": 0 if self.fold_batches is None else self.fold_batches.drawn}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state_dict = dict(state_dict)
        taken = state_dict.pop("onepass_eval_batches", None)
        self.fold_restored = state_dict.pop("onepass_fold", None)
        super().load_state_dict(state_dict)
        if taken is not None and self.validation is not None:
            self.validation.restart(int(taken))


class _Validation:
    """The ``val_loss`` callable: the model's loss on the next eval batch."""

    def __init__(self, trainer: "transformers.Trainer", dataset: Any):
        self.trainer, self.dataset = trainer, dataset
        self.taken = 0              # eval batches taken so far
        self.last: float | None = None
        self._iterator = None
        self._index = 0             # batches taken from the current pass
        self._skip = 0              # batches to pass over when the iterator starts (after a resume)

    def restart(self, taken: int) -> None:
        """Continue after ``taken`` batches (the loader yields the same batches each pass)."""
        self.taken, self._iterator, self._skip = taken, None, taken

    def _next_batch(self):
        if self._iterator is None:
            loader = self.trainer.get_eval_dataloader(self.dataset)
            self._iterator, self._index = iter(loader), 0
            for _ in range(self._skip % len(loader)):
                next(self._iterator)
                self._index += 1
            self._skip = 0
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.trainer.get_eval_dataloader(self.dataset))
            self._index = 0
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise ValueError("onepass: the eval dataloader yields no batches") from None
        self._index += 1
        self.taken += 1
        return batch

    def __call__(self) -> torch.Tensor:
        trainer = self.trainer
        model = trainer.model
        with own_randomness():
            # Not trainer._prepare_inputs: TRL-style Trainers override it for their training batches.
            inputs = send_to_device(self._next_batch(), trainer.args.device)
            with eval_mode(model), trainer.compute_loss_context_manager():
                outputs = model(**inputs)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if loss is None:
            keys = ", ".join(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
            raise ValueError(f"onepass: the model returned no loss for an eval batch (inputs: {keys}); "
                             "the eval dataset must carry labels (or use a collator that adds them)")
        self.last = float(loss.detach())
        return loss


class _Tuning(transformers.TrainerCallback):
    """What :func:`tune` adds to the Trainer's loop, on its callback events.

    * ``on_step_begin``: the Trainer zeroes gradients with ``model.zero_grad()``;
      this also drops the graphs the optimizer kept from an update it did not
      take (a step an fp16 ``GradScaler`` skipped). On an update whose gradient
      is differentiated, until ``on_pre_optimizer_step``: attention on its math
      kernel and a ``torch.compile``d model's eager code
      (:func:`~onepass.integrations._common.differentiated_forward`), and under
      DDP the model's ``no_sync()``: DDP all-reduces first-order gradients only,
      and the optimizer averages the gradient, its Hessian-vector products and
      the validation gradient itself.
    * ``on_log``: a training log gets the tuned values and the last validation loss.
    """

    def __init__(self, trainer, optimizer: TrainerAdamW, validation: _Validation, prefix: str,
                 fold: float | None, keep_best: bool | None):
        self.trainer, self.optimizer, self.validation, self.prefix = trainer, optimizer, validation, prefix
        self.fold_share, self.keep_best = fold, keep_best
        self._fold_data = None
        self._forward = contextlib.ExitStack()

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        """The recipe's loop step over the run's ``max_steps``: a
        :class:`~onepass.optim.Fold` (it watches the validation losses for the
        best weights) and, from the fold on, a share of the training batches
        replaced by eval batches (:class:`~onepass.integrations._common.FoldBatches`)."""
        optimizer, trainer = self.optimizer, self.trainer
        optimizer.val_loss = self.validation          # a second train() watches afresh
        fold = Fold(optimizer, total_steps=max(int(state.max_steps), 1), fraction=self.fold_share,
                    keep_best=self.keep_best, model=trainer.model)
        optimizer.fold, optimizer.fold_batches, self._fold_data = fold, None, None
        if fold.fraction > 0:
            try:
                eval_batches = len(trainer.get_eval_dataloader(self.validation.dataset))
                optimizer.fold_batches = FoldBatches(len(train_dataloader), eval_batches)
            except (TypeError, ValueError):   # a dataset without a length, or an empty one
                warnings.warn("tune(trainer): the fold trains on the training data only (it needs train and "
                              "eval dataloaders with a length)", UserWarning, stacklevel=2)
        restored, optimizer.fold_restored = optimizer.fold_restored, None
        if restored is not None:
            fold.load_state_dict(restored["fold"])
            if optimizer.fold_batches is not None:
                optimizer.fold_batches.drawn = int(restored["drawn"])
        if optimizer.fold_batches is not None:
            dataset = self.validation.dataset
            self._fold_data = cycled(lambda: iter(trainer.get_eval_dataloader(dataset)),
                                     skip=optimizer.fold_batches.taken)

    def fold_batch(self):
        """The eval batch that replaces this training batch, or None (not folded yet, or not this one)."""
        optimizer = self.optimizer
        fold = optimizer.fold
        if fold is None or optimizer.fold_batches is None or not fold.folded:
            return None
        if not optimizer.fold_batches.next_is_validation():
            return None
        with own_randomness():
            return next(self._fold_data)

    def on_step_begin(self, args, state, control, **kwargs):
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        self._forward.close()
        if optimizer.needs_graph:
            self._forward.enter_context(differentiated_forward(optimizer))
            wrapped = self.trainer.model_wrapped
            if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
                self._forward.enter_context(wrapped.no_sync())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._forward.close()   # after backward and clipping: the update and the validation loss as usual

    def on_step_end(self, args, state, control, **kwargs):
        self._forward.close()
        if self.optimizer.fold is not None:
            self.optimizer.fold.step()

    def on_train_end(self, args, state, control, **kwargs):
        self._forward.close()
        fold = self.optimizer.fold
        if fold is not None and not fold.folded:
            fold.restore_best()   # no fold, or training stopped before it: the best weights at the end

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not ("loss" in logs or "learning_rate" in logs):
            return   # not a training log (an evaluation, the summary)
        extra = {self.prefix + k: v for k, v in tuned_values(self.optimizer).items()}
        if self.validation.last is not None:
            extra[self.prefix + "val_loss"] = self.validation.last
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)   # the Trainer appended its copy of logs before on_log
