"""Lightning: a callback that lets a ``LightningModule`` train with a
:mod:`onepass.optim` optimizer.

The module returns a ``onepass.optim`` optimizer from ``configure_optimizers``
as it would any other; one callback does the rest::

    from onepass.integrations.lightning import OnepassCallback

    class Model(lightning.LightningModule):
        ...
        def validation_step(self, batch, batch_idx):
            loss = ...
            self.log("val_loss", loss)
            return loss                      # the callback takes the loss from here

        def configure_optimizers(self):
            return onepass.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)

    trainer = lightning.Trainer(callbacks=[OnepassCallback()])
    trainer.fit(model, train_loader, val_loader)

What the callback does, from ``on_fit_start`` to ``teardown``:

* **backward.** The module's ``backward`` (which Lightning's precision plugin
  calls for the loss of ``training_step``) is given
  ``create_graph=optimizer.needs_graph``: one of the two methods the callback wraps (``training_step`` during the fold, below).
  A module that overrides ``backward`` must pass its keyword arguments on to
  ``loss.backward``. From ``on_train_batch_start`` to
  ``on_before_optimizer_step`` of those updates, ``scaled_dot_product_attention``
  takes its math kernel (the fused kernels have no double backward) and a
  ``torch.compile``d network runs its eager code (``torch.compiler``'s
  ``"force_eager"`` stance: compiled graphs have no double backward); the
  other updates keep both.
* **Validation loss.** On the last update of each window the optimizer asks
  for the validation loss at the new weights. The callback takes the next
  batch of the validation data, cycled: ``OnepassCallback(val_dataloader=...)``,
  else the ``val_dataloaders`` given to ``trainer.fit``, else the datamodule's
  or module's ``val_dataloader()`` (the first loader if there are several).
  The batch goes through the precision plugin and the module's batch-transfer
  hooks like a validation batch (the global random generators are put back
  afterwards, so the validation does not shift dropout or shuffling), then
  the loss is ``val_loss(pl_module, batch)`` if the callback was given one, else the
  value ``validation_step(batch, batch_idx)`` returns (a scalar tensor, or a
  dict with ``"loss"``). The module is in ``eval()`` mode for that call,
  gradients are on, and its ``self.log`` calls are ignored (the validation
  loop logs as usual). The callback hands this to the optimizer as its public
  ``val_loss`` attribute for the fit; an optimizer built with its own
  ``val_loss=`` keeps it.
* **The loop step** (the recipe's, :class:`onepass.optim.Fold`, one per
  optimizer; ``fold=`` and ``keep_best=``): the weights (and the module's
  buffers) of the lowest validation loss seen while tuning are kept; after
  75% of ``trainer.estimated_stepping_batches`` they are restored and the
  optimizer frozen (your LR scheduler still drives it), and from then on the
  module's ``training_step`` (wrapped for the fit) gets a validation batch,
  prepared like a training batch, instead of the training batch for
  ``len(val) / (len(train) + len(val))`` of the batches, spread by a fixed
  rule (:class:`~._common.FoldBatches`): Lightning gives a callback no way to
  change the training data, and this trains on the validation data as a
  plain loop's fold draws from train+validation. ``onepass.optim.SGD``'s
  recipe adds its guard: each update's training loss (``training_step``'s
  ``loss``) is handed to the fold, so a blow-up, in the fold too, puts the
  best weights back and halves the learned rate, as in a plain loop.
* **Logging.** The tuned values go to Lightning's loggers through
  ``pl_module.log_dict`` as ``onepass/lr/group0``, ... (the learned value;
  ``onepass/lr_in_use/group0`` is the rate in use, learned × scheduled; fixed values are not logged), with
  ``onepass/val_loss``, the validation loss of the last hyperparameter step,
  after the optimizer steps Lightning writes (every ``log_every_n_steps``).
* **Checkpoints.** The optimizer's ``state_dict`` holds the tuned values and
  their optimiser's state, and the callback's holds the position in the
  validation data and the folds' state, so ``trainer.fit(..., ckpt_path=...)`` resumes the tuned run
  exactly from an end-of-epoch checkpoint (given a validation loader that
  yields the same batches each pass). Lightning itself restarts the epoch's
  data when it resumes from a mid-epoch checkpoint, with any optimizer.

Trainer settings: ``accumulate_grad_batches`` works (``k`` micro-batches give
the update, and the hyperparameters, of one batch of their concatenation);
``gradient_clip_val`` with the default ``gradient_clip_algorithm="norm"``
works and is seen by the hyperparameter step, ``"value"`` is refused;
``precision`` ``"32-true"``, ``"64-true"``, ``"bf16-mixed"``, ``"16-mixed"``
(its ``GradScaler`` is set as the optimizer's ``grad_scaler``; under either
mixed precision ``skip_non_finite`` is set on) and LR schedulers from
``configure_optimizers`` (``"interval": "step"`` or ``"epoch"``) work. (With
``"64-true"`` Lightning loads a checkpoint into the module before converting
it to float64, so a resumed run's weights pass through float32; a module
built in float64 under ``"32-true"`` resumes bit for bit.) Manual optimization works too: the callback
wraps ``manual_backward`` the same way, since it goes through ``backward``.
Multi-process strategies (DDP, FSDP, DeepSpeed) are refused with one line.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from typing import Any, Callable, Iterable, Mapping

import torch

from ..optim import Fold, TunedOptimizer
from ._common import FoldBatches, cycled, differentiated_forward, eval_mode, own_randomness, tuned_values
from ._private import lightning_fit_val_loader

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as error:   # pragma: no cover - the extra is installed in CI
    raise ImportError("onepass.integrations.lightning needs Lightning: pip install 'onepass[lightning]'") from error

__all__ = ["OnepassCallback"]


class OnepassCallback(pl.Callback):
    """Connects a ``onepass.optim`` optimizer to Lightning's training loop
    (see the module's docs).

    Args:
        val_dataloader: iterable of validation batches for the hyperparameter
            steps, cycled. Default: the validation data of ``trainer.fit``.
        val_loss: ``val_loss(pl_module, batch) -> scalar tensor``. Default: the
            value ``pl_module.validation_step(batch, batch_idx)`` returns (a
            tensor, or a dict with ``"loss"``).
        prefix: prefix of the logged names (``"onepass/"``: ``onepass/lr/group0``).
        fold: the share of the updates, at the end, trained with the
            hyperparameters frozen and validation batches mixed into the
            training data (:class:`~onepass.optim.Fold`). Default: the
            optimizer's recipe (AdamW and Adam: 0.25; SGD: none); 0 turns it off.
        keep_best: restore the weights of the lowest validation loss seen
            while tuning, at the fold (at the end if the fit ends before it). Default:
            the recipe's (AdamW and Adam: on).
    """

    def __init__(self, val_dataloader: Iterable | None = None,
                 val_loss: Callable[[Any, Any], torch.Tensor] | None = None, prefix: str = "onepass/",
                 fold: float | None = None, keep_best: bool | None = None):
        if val_loss is not None and not callable(val_loss):
            raise ValueError("OnepassCallback(val_loss=...) must be a callable val_loss(pl_module, batch)")
        if fold is not None and not 0.0 <= fold < 1.0:
            raise ValueError(f"OnepassCallback(fold=...) must lie in [0, 1), got {fold}")
        self._fold_share, self._keep_best = fold, keep_best
        self.folds: list[Fold] = []              # one per onepass optimizer, from on_train_start
        self._fold_batches: FoldBatches | None = None
        self._fold_data = None                   # the validation batches the fold trains on
        self._fold_restored: dict | None = None
        self._loader_given = val_dataloader
        self._loss_fn = val_loss
        self.prefix = prefix
        self._optimizers: list[TunedOptimizer] = []
        self._loader: Iterable | None = None
        self._iterator = None
        self._passes = 0          # validation passes started
        self._index = 0           # batches taken in the current pass
        self.val_batches_taken = 0   # validation batches taken so far (one per hyperparameter step)
        self._restored: tuple[int, int] | None = None
        self._last_val: torch.Tensor | None = None
        self._logged_at: list[int] = []
        self._patched: list[tuple[Any, str, Any]] = []   # (object, attribute, previous instance value)
        self._val_losses: list[tuple[TunedOptimizer, Any]] = []   # each optimizer's val_loss before the fit
        self._forward = contextlib.ExitStack()   # the differentiated update's forward context

    # ------------------------------------------------------------------ setup

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._optimizers = [o for o in trainer.optimizers if isinstance(o, TunedOptimizer)]
        if not self._optimizers:
            names = ", ".join(type(o).__name__ for o in trainer.optimizers) or "no optimizer"
            warnings.warn(f"OnepassCallback is idle: configure_optimizers returned {names}, "
                          "not a onepass.optim optimizer", UserWarning, stacklevel=2)
            return
        if trainer.world_size > 1:
            raise ValueError(f"OnepassCallback: multi-process training (world_size={trainer.world_size}) is not "
                             "supported yet: the differentiated updates would have to bypass DDP "
                             "(examples/ddp.py shows a plain loop; transformers' tune(trainer) does it)")
        if trainer.gradient_clip_val and trainer.gradient_clip_algorithm == "value":
            raise ValueError("OnepassCallback: gradient_clip_algorithm='value' is not supported by onepass.optim "
                             "(the hyperparameter step can differentiate clipping by norm only); use 'norm'")
        needs_data = [o for o in self._optimizers if o.val_loss is None]
        if needs_data:
            self._loader = self._find_loader(trainer)
            if self._loader is None:
                raise ValueError("OnepassCallback: no validation data for the hyperparameter steps: pass "
                                 "OnepassCallback(val_dataloader=...), trainer.fit(..., val_dataloaders=...), "
                                 "or define val_dataloader() on the module or datamodule")
            self._start_iterator()
            if self._restored is not None:   # where the checkpoint left the validation data
                passes, index = self._restored
                self._passes = passes
                for _ in range(index):       # the loader yields the same batches each pass
                    next(self._iterator)
                self._index = index
        self._restored = None
        self._check_backward(pl_module)
        self._patch(pl_module, "backward", self._backward_with_graph(pl_module.backward))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        val_loss = functools.partial(self._validation_loss, trainer, pl_module)
        for optimizer in self._optimizers:
            # the fit's val_loss (the callback's, then the fold's watch on it); teardown puts the user's back
            self._val_losses.append((optimizer, optimizer.val_loss))
            if optimizer in needs_data:
                optimizer.val_loss = val_loss
            if scaler is not None and optimizer.grad_scaler is None:
                optimizer.grad_scaler = scaler   # the hyperparameter step divides the loss scale out
            if "mixed" in str(trainer.precision) and optimizer.skip_non_finite is None:
                optimizer.skip_non_finite = True   # AMP: a non-finite hypergradient skips that hyperparameter step
        self._logged_at = [o.steps_taken for o in self._optimizers]

    def _find_loader(self, trainer: "pl.Trainer"):
        if self._loader_given is not None:
            return self._loader_given
        loader = trainer.val_dataloaders   # public, once Lightning's validation loop has loaded it
        if loader is None:
            loader = lightning_fit_val_loader(trainer)
        if isinstance(loader, Mapping):
            loader = next(iter(loader.values()), None)
        elif isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        return loader

    @staticmethod
    def _check_backward(pl_module) -> None:
        """A module's own ``backward`` must pass ``create_graph`` on to ``loss.backward``."""
        if type(pl_module).backward is pl.LightningModule.backward:
            return
        parameters = inspect.signature(pl_module.backward).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD or p.name == "create_graph" for p in parameters):
            raise ValueError(f"OnepassCallback: {type(pl_module).__name__}.backward(...) takes no keyword "
                             "arguments; accept **kwargs and pass them to loss.backward (onepass needs "
                             "create_graph=True on some updates)")

    def _patch(self, obj, name: str, value) -> None:
        self._patched.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, value)

    def _unpatch(self) -> None:
        self._forward.close()
        while self._val_losses:
            optimizer, previous = self._val_losses.pop()
            optimizer.val_loss = previous
        while self._patched:
            obj, name, previous = self._patched.pop()
            if previous is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)

    def _backward_with_graph(self, backward: Callable) -> Callable:
        optimizers = self._optimizers

        def backward_with_graph(loss, *args, **kwargs):
            if any(o.needs_graph for o in optimizers):
                kwargs["create_graph"] = True
            return backward(loss, *args, **kwargs)
        return backward_with_graph

    # ------------------------------------------------------------------ the fold

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """The recipe's loop step (:class:`onepass.optim.Fold`), one per optimizer,
        over the fit's ``estimated_stepping_batches``; from the fold on, a share of
        the training batches are validation batches (:class:`FoldBatches`)."""
        self.folds = []
        if not self._optimizers:
            return
        self._logged_at = [o.steps_taken for o in self._optimizers]   # a resumed optimizer's count is in by now
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            if self._fold_share:
                raise ValueError("OnepassCallback(fold=...): the fit has no known number of updates "
                                 "(set max_steps or max_epochs)")
            share = 0.0
        else:
            share = self._fold_share
        for optimizer in self._optimizers:
            fraction = share
            if total == float("inf"):
                fraction, total = 0.0, max(optimizer.steps_taken, 1)
            self.folds.append(Fold(optimizer, total_steps=int(total), fraction=fraction,
                                   keep_best=self._keep_best, model=pl_module))
        self._fold_batches = None
        if any(f.fraction > 0 for f in self.folds):
            loader = self._loader if self._loader is not None else self._find_loader(trainer)
            try:   # no validation data, a loader without a length, an endless training loader: no share
                self._fold_batches = FoldBatches(int(trainer.num_training_batches), len(loader))
            except (TypeError, ValueError, OverflowError):
                warnings.warn("OnepassCallback: the fold trains on the training data only (it needs training "
                              "and validation dataloaders with a length)", UserWarning, stacklevel=2)
        if self._fold_restored is not None:
            for fold, state in zip(self.folds, self._fold_restored["folds"]):
                fold.load_state_dict(state)
            if self._fold_batches is not None:
                self._fold_batches.drawn = int(self._fold_restored["drawn"])
        self._fold_restored = None
        if self._fold_batches is not None:
            skip = self._fold_batches.taken
            self._fold_data = cycled(lambda: iter(loader), skip=skip)
            self._patch(pl_module, "training_step", self._training_step_of_the_fold(trainer, pl_module))

    def _training_step_of_the_fold(self, trainer, pl_module) -> Callable:
        training_step = pl_module.training_step

        def training_step_of_the_fold(batch, *args, **kwargs):
            if any(f.folded for f in self.folds) and self._fold_batches.next_is_validation():
                with own_randomness():
                    batch = self._prepared(trainer, pl_module, next(self._fold_data))
            return training_step(batch, *args, **kwargs)
        return training_step_of_the_fold

    def _count_updates(self, before: list[int], loss: torch.Tensor | None) -> None:
        """One ``fold.step`` per update taken; the last one gets the batch's
        training loss, for a guard (``onepass.optim.SGD``'s recipe) to see a
        blow-up at once, in the fold too."""
        for fold, optimizer, seen in zip(self.folds, self._optimizers, before):
            taken = optimizer.steps_taken - seen
            for i in range(taken):
                fold.step(loss if i == taken - 1 else None)

    def on_train_end(self, trainer, pl_module) -> None:
        for fold in self.folds:
            if not fold.folded:
                fold.restore_best()   # no fold, or the fit stopped before it: the best weights at the end

    # ------------------------------------------------------------------ the differentiated updates' forward

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """``training_step`` of an update whose gradient is differentiated runs
        attention on its math kernel and a compiled model's eager code."""
        self._forward.close()
        for optimizer in self._optimizers:
            self._forward.enter_context(differentiated_forward(optimizer))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._forward.close()   # after backward: the update and the validation loss run as usual

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._forward.close()

    # ------------------------------------------------------------------ validation batches

    def _start_iterator(self) -> None:
        self._iterator = iter(self._loader)
        self._passes += 1
        self._index = 0

    def _next_batch(self):
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._start_iterator()
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise ValueError("OnepassCallback: the validation dataloader yields no batches") from None
        self._index += 1
        self.val_batches_taken += 1
        return batch

    @staticmethod
    def _prepared(trainer, pl_module, batch):
        """A batch from a validation loader as Lightning prepares a batch: the
        precision plugin's input conversion, the batch-transfer hook, the device."""
        batch = trainer.precision_plugin.convert_input(batch)
        datamodule = trainer.datamodule   # whose hook Lightning calls: the datamodule's if it overrides it
        owner = datamodule if is_overridden("on_before_batch_transfer", datamodule) else pl_module
        batch = owner.on_before_batch_transfer(batch, 0)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)

    def _validation_loss(self, trainer, pl_module) -> torch.Tensor:
        with own_randomness():   # the training's random streams do not see the validation
            batch = self._next_batch()
            batch_idx = self._index - 1
            precision = trainer.precision_plugin
            batch = self._prepared(trainer, pl_module, batch)
            with eval_mode(pl_module), _no_logging(pl_module), precision.val_step_context():
                if self._loss_fn is not None:
                    out = self._loss_fn(pl_module, batch)
                else:
                    out = pl_module.validation_step(batch, batch_idx)
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            got = "a dict without 'loss'" if isinstance(out, Mapping) else type(out).__name__
            raise ValueError(f"OnepassCallback: validation_step returned {got}; return the validation loss "
                             "(a scalar tensor or a dict with 'loss'), or pass OnepassCallback(val_loss=fn)")
        self._last_val = loss.detach()
        return loss

    # ------------------------------------------------------------------ logging

    def _log(self, trainer, pl_module, loss: torch.Tensor | None = None) -> None:
        optimizers = self._optimizers
        if not optimizers:
            return
        steps = [o.steps_taken for o in optimizers]
        if steps == self._logged_at:
            return   # a micro-batch of gradient accumulation: no update yet
        self._count_updates(self._logged_at, loss)
        self._logged_at = steps
        # Only on the steps Lightning writes (every log_every_n_steps), as its own
        # LearningRateMonitor does: self.log costs more than the values themselves.
        every = trainer.log_every_n_steps
        if trainer.loggers and every and (trainer.global_step % every == 0 or trainer.should_stop):
            pl_module.log_dict(self.hyperparameters, on_step=True, on_epoch=False, logger=True)

    @property
    def hyperparameters(self) -> dict[str, float]:
        """What is logged: every optimizer's tuned ``hyperparameters`` with the prefix
        (and ``opt{i}/`` when there are several), and ``val_loss``."""
        out = {}
        several = len(self._optimizers) > 1
        for i, optimizer in enumerate(self._optimizers):
            middle = f"opt{i}/" if several else ""
            out.update({f"{self.prefix}{middle}{k}": v for k, v in tuned_values(optimizer).items()})
        if self._last_val is not None:
            out[f"{self.prefix}val_loss"] = float(self._last_val)
        return out

    # ------------------------------------------------------------------ checkpoints and teardown

    def state_dict(self) -> dict[str, Any]:
        return {"val_passes": self._passes, "val_index": self._index, "val_batches_taken": self.val_batches_taken,
                "last_val": None if self._last_val is None else float(self._last_val),
                "folds": [f.state_dict() for f in self.folds],
                "fold_drawn": 0 if self._fold_batches is None else self._fold_batches.drawn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = (int(state_dict["val_passes"]), int(state_dict["val_index"]))
        self.val_batches_taken = int(state_dict["val_batches_taken"])
        last = state_dict.get("last_val")
        self._last_val = None if last is None else torch.tensor(last)
        if state_dict.get("folds"):
            self._fold_restored = {"folds": state_dict["folds"], "drawn": state_dict.get("fold_drawn", 0)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._forward.close()   # a micro-batch of gradient accumulation takes no optimizer step
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self._log(trainer, pl_module, loss.detach() if isinstance(loss, torch.Tensor) else None)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._unpatch()
        self._iterator = self._fold_data = None


_MISSING = object()


@contextlib.contextmanager
def _no_logging(pl_module):
    """``self.log`` inside ``validation_step`` when the optimizer calls it: ignored
    (Lightning refuses logging from inside ``optimizer_step``)."""
    saved = {name: pl_module.__dict__.get(name, _MISSING) for name in ("log", "log_dict")}
    pl_module.log = _ignore
    pl_module.log_dict = _ignore
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is _MISSING:
                pl_module.__dict__.pop(name, None)
            else:
                pl_module.__dict__[name] = previous


def _ignore(*args, **kwargs) -> None:
    return None
