"""Tasks: what differs between the paper's dataset families in a training run.

A *task* bundles, for one ``dataset.kind`` of a resolved config, everything
:func:`onepass.experiment.run.run_training` needs that is not the tuner or the
logging loop:

* the data, loaded onto the run's device (on train+val when the algorithm has
  no validation split);
* :meth:`Task.build_model` (seeded by the caller) and the loss handed to the
  :class:`~onepass.core.Tuner` (:meth:`Task.tuner_loss`: ``loss_fn`` for
  ``(inputs, targets)`` batches, or a ``batch_loss`` for language-model
  windows that carry a hidden state);
* the training batches (:attr:`Task.sampler`, with ``next``, ``state_dict``
  and ``load_state_dict``: :class:`~onepass.experiment.run.BatchSampler` or
  :class:`WindowSampler`) and the validation batches of the hypersteps
  (:meth:`Task.val_batch`);
* :meth:`Task.losses_now`, one log row at the current weights: losses on the
  training / validation / test data and the family's metrics
  (:attr:`Task.metrics`: ``test_loss_unnormalised`` for UCI, ``test_accuracy``
  for the classifiers, ``test_perplexity`` for Penn Treebank);
* :meth:`Task.state_dict` / :meth:`Task.load_state_dict`: whatever a
  checkpoint must hold beyond the model, tuner and sampler (Penn Treebank: the
  training and validation hidden states and the validation stream's position).

=================  ==========================  ====================  ==================
``dataset.kind``   model                       loss                  metric
=================  ==========================  ====================  ==================
``uci``            MLP d-50-1                  MSE                   unnormalised MSE
``fashion_mnist``  MLP 784-50-10               cross-entropy         test accuracy
``penn_treebank``  2-layer LSTM 650            cross-entropy / token test perplexity
``cifar10``        ResNet-18                   cross-entropy         test accuracy
``python``         yours (or the MLP)          MSE or cross-entropy  (cross-entropy:
                                                                     test accuracy)
=================  ==========================  ====================  ==================

``model.kind: python`` replaces the model of every family but Penn Treebank by
the ``torch.nn.Module`` a ``model.target`` function returns; ``dataset.kind:
python`` takes the splits from a ``dataset.target`` function
(:mod:`onepass.experiment.python_targets` says what each must return).

The UCI task reproduces, operation for operation, the loop ``run_training``
had before tasks existed, so UCI results are unchanged bit for bit.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onepass.experiment.config import MODEL_KEYS, PYTHON

EVAL_CHUNK = 1000
"""Examples per forward pass when a whole split is evaluated (images, MLP inputs)."""


# --------------------------------------------------------------- samplers

class BatchSampler:
    """Training batches: the whole set (``batch_size=None``) or shuffled
    mini-batches, epoch by epoch, from a seeded generator (checkpointable)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int | None, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: Tensor | None = None
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.batch_size is None or self.batch_size >= len(self.x):
            return self.x, self.y
        if self.order is None or self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.x), generator=self.generator)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size].to(self.x.device)
        self.position += self.batch_size
        return self.x[index], self.y[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.order = None if state["order"] is None else state["order"].cpu()
        self.position = int(state["position"])


class HiddenCarrier:
    """The (detached) LSTM hidden state a token stream carries from window to window."""

    def __init__(self):
        self.hidden: tuple[Tensor, Tensor] | None = None

    def state(self):
        return None if self.hidden is None else tuple(h.detach().clone() for h in self.hidden)

    def load(self, state, device) -> None:
        self.hidden = None if state is None else tuple(h.to(device) for h in state)


class WindowSampler:
    """Consecutive ``bptt``-token windows of a batchified ``(n_steps, batch)``
    stream, epoch after epoch; a batch is ``(inputs, targets, carrier)``.

    The carrier's hidden state is reset at the start of each epoch, as in the
    PyTorch ``word_language_model`` example, and otherwise carried over (the
    loss stores the detached final state of each window in it).
    """

    def __init__(self, source: Tensor, bptt: int):
        self.source, self.bptt = source, bptt
        self.carrier = HiddenCarrier()
        self.position = 0          # first time step of the next window
        self.epoch = 0

    def next(self) -> tuple[Tensor, Tensor, HiddenCarrier]:
        if self.position >= self.source.shape[0] - 1:
            self.position, self.epoch = 0, self.epoch + 1
            self.carrier.hidden = None
        start = self.position
        length = min(self.bptt, self.source.shape[0] - 1 - start)
        self.position += length
        return self.source[start:start + length], self.source[start + 1:start + 1 + length], self.carrier

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch, "hidden": self.carrier.state()}

    def load_state_dict(self, state: Mapping) -> None:
        self.position, self.epoch = int(state["position"]), int(state["epoch"])
        self.carrier.load(state["hidden"], self.source.device)


# ------------------------------------------------------------------ tasks

class Task:
    """Base class; see the module docs. Subclasses set the attributes below."""

    metrics: tuple[str, ...] = ()
    """Extra log columns / summary keys of this family, after the losses."""

    def __init__(self, config: Mapping, data_dir, device: torch.device):
        self.config = config
        self.device = torch.device(device)
        self.split = config["algorithm"]["validation"] == "split"
        self.full_validation = bool(config["algorithm"]["full_validation"])
        self.batch_size = config["training"]["batch_size"]
        self.seed = int(config["seed"])
        self.n_inputs = self.n_outputs = 0
        self.sampler: Any = None

    # model and loss
    def build_model(self) -> nn.Module:
        if self.config["model"]["kind"] == PYTHON:
            from onepass.experiment.python_targets import build_model as build_target_model
            return build_target_model(self.config)
        spec = {"kind": self.config["model"]["kind"]}
        spec.update({k: self.config["model"][k] for k in MODEL_KEYS[spec["kind"]]})
        from onepass.models import build_model
        return build_model(spec, self.n_inputs, self.n_outputs)

    def tuner_loss(self) -> dict:
        """Keyword arguments of :class:`~onepass.core.Tuner` giving the loss."""
        raise NotImplementedError

    # batches
    def val_batch(self):
        raise NotImplementedError

    # logging
    def losses_now(self, model: nn.Module, train_loss: float | None) -> dict:
        raise NotImplementedError

    # checkpoints
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


class TensorTask(Task):
    """Tasks whose data are ``(x, y)`` tensors: UCI regression and image classification.

    Training batches come from a :class:`BatchSampler` seeded with ``seed``;
    validation batches of the same size are drawn from the validation set by
    a generator seeded with ``seed + 1`` (the whole set for full batches).
    """

    loss_fn: Callable = staticmethod(F.mse_loss)

    def _setup(self, data) -> None:
        self.data = data
        if self.split:
            self.x_train, self.y_train = data.x_train, data.y_train
        else:
            self.x_train, self.y_train = data.x_trainval, data.y_trainval
        self.sampler = BatchSampler(self.x_train, self.y_train, self.batch_size, self.seed)
        self.val_generator = torch.Generator().manual_seed(self.seed + 1)
        self.last_val_batch = None

    def tuner_loss(self) -> dict:
        return {"loss_fn": type(self).loss_fn}

    def val_batch(self):
        data, batch_size = self.data, self.batch_size
        if batch_size is None or batch_size >= len(data.x_val):
            batch = (data.x_val, data.y_val)
        else:
            index = torch.randperm(len(data.x_val), generator=self.val_generator)[:batch_size]
            index = index.to(self.device)
            batch = (data.x_val[index], data.y_val[index])
        self.last_val_batch = batch
        return batch

    def evaluate(self, model, x, y) -> float:
        with torch.no_grad():
            return type(self).loss_fn(model(x), y).item()

    def losses_now(self, model, train_loss):
        """A log row at the current weights; ``train_loss`` None → evaluate on the whole training set."""
        data = self.data
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                train = self.evaluate(model, self.x_train, self.y_train) if train_loss is None else train_loss
                if not self.split:
                    val = None
                elif train_loss is None or self.full_validation or self.last_val_batch is None:
                    val = self.evaluate(model, data.x_val, data.y_val)
                else:
                    val = self.evaluate(model, *self.last_val_batch)
                row = {"train_loss": train, "val_loss": val, **self.test_metrics(model)}
            finally:
                model.train(was_training)
        return row

    def test_metrics(self, model) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"val_generator": self.val_generator.get_state()}

    def load_state_dict(self, state: Mapping) -> None:
        if "val_generator" in state:
            self.val_generator.set_state(state["val_generator"].cpu())


class UCITask(TensorTask):
    """UCI regression: full-batch MSE on standardised targets; the test MSE is
    also reported in the original target units (``test_loss_unnormalised``).

    With ``population=P`` the model is a :class:`~onepass.models.PopulationMLP`:
    the loss is :func:`~onepass.models.member_mse` (one value per member) and
    every value of a log row is a list with one entry per member.
    """

    metrics = ("test_loss_unnormalised",)

    def __init__(self, config, data_dir, device, population: int | None = None):
        super().__init__(config, data_dir, device)
        from onepass.data.uci import load_uci
        data = load_uci(config["dataset"]["name"], data_dir,
                        shuffle_seed=config["dataset"]["shuffle_seed"]).to(self.device)
        self._setup(data)
        self.n_inputs, self.n_outputs = data.n_inputs, 1
        self.population = population

    def tuner_loss(self) -> dict:
        if self.population is None:
            return super().tuner_loss()
        from onepass.models import member_mse
        return {"loss_fn": member_mse}

    def evaluate(self, model, x, y):
        if self.population is None:
            return super().evaluate(model, x, y)
        from onepass.models import member_mse
        with torch.no_grad():
            return member_mse(model(x), y).tolist()

    def test_metrics(self, model):
        test = self.evaluate(model, self.data.x_test, self.data.y_test)
        unnormalised = ([self.data.unnormalise_mse(t) for t in test] if self.population is not None
                        else self.data.unnormalise_mse(test))
        return {"test_loss": test, "test_loss_unnormalised": unnormalised}


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets)


def evaluate_classifier(model, x: Tensor, y: Tensor, accuracy: bool = False):
    """Mean cross-entropy of ``model`` on ``(x, y)`` in chunks of :data:`EVAL_CHUNK`
    (and the accuracy: ``(loss, accuracy)`` when ``accuracy``)."""
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_CHUNK):
            logits = model(x[start:start + EVAL_CHUNK])
            target = y[start:start + EVAL_CHUNK]
            total += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
    loss = total / max(len(x), 1)
    return (loss, correct / max(len(x), 1)) if accuracy else loss


class ClassificationTask(TensorTask):
    """Image classification with cross-entropy; whole splits are evaluated in
    chunks of :data:`EVAL_CHUNK` and the test accuracy is tracked."""

    metrics = ("test_accuracy",)
    loss_fn = staticmethod(_cross_entropy)

    def evaluate(self, model, x, y, accuracy: bool = False):
        return evaluate_classifier(model, x, y, accuracy)

    def test_metrics(self, model):
        loss, accuracy = self.evaluate(model, self.data.x_test, self.data.y_test, accuracy=True)
        return {"test_loss": loss, "test_accuracy": accuracy}

    # Subclasses name their loader (module, function) and default validation size.
    loader: tuple[str, str]
    default_validation_size: int

    def __init__(self, config, data_dir, device):
        super().__init__(config, data_dir, device)
        import importlib
        module, function = self.loader
        load = getattr(importlib.import_module(module), function)
        dataset = config["dataset"]
        data = load(data_dir, validation_size=dataset["validation_size"] or self.default_validation_size,
                    seed=dataset["shuffle_seed"] or 0).to(self.device)
        self._setup(data)
        self.n_inputs, self.n_outputs = data.x_train.shape[1], 10


class FashionMNISTTask(ClassificationTask):
    """Fashion-MNIST: 784 standardised pixels, 10 classes, 50,000 / 10,000 train / validation."""

    loader = ("onepass.data.fashion_mnist", "load_fashion_mnist")
    default_validation_size = 10000


class CIFAR10Task(ClassificationTask):
    """CIFAR-10: 3×32×32 standardised images, 10 classes, 45,000 / 5,000 train / validation."""

    loader = ("onepass.data.cifar10", "load_cifar10")
    default_validation_size = 5000


class PythonTask(TensorTask):
    """Your own data: the splits a ``dataset.target`` function returns
    (:func:`onepass.experiment.python_targets.load_splits`), trained with
    ``training.loss`` (``mse``, or ``cross_entropy`` with ``test_accuracy``
    tracked) on your ``model.target`` or the MLP. Whole splits are evaluated
    in chunks of :data:`EVAL_CHUNK`; :meth:`build_model` checks the model's
    output on two training examples against the targets' shape."""

    def __init__(self, config, data_dir, device):
        super().__init__(config, data_dir, device)
        from onepass.experiment.python_targets import TargetError, load_splits
        data = load_splits(config)
        if config["model"]["kind"] == "mlp" and data.x_train.dim() != 2:
            raise TargetError(f"dataset.target {config['dataset']['target']!r} returned inputs x "
                              f"of shape {tuple(data.x_train.shape)}; model.kind mlp needs (n, "
                              "features)")
        self._setup(data.to(self.device))
        self.classify = config["training"]["loss"] == "cross_entropy"
        self.metrics = ("test_accuracy",) if self.classify else ()
        self.n_inputs, self.n_outputs = data.n_inputs, data.n_outputs

    def build_model(self) -> nn.Module:
        from onepass.experiment.python_targets import check_output
        model = super().build_model()
        check_output(model, self.data, self.config)
        return model

    def tuner_loss(self) -> dict:
        return {"loss_fn": _cross_entropy if self.classify else F.mse_loss}

    def evaluate(self, model, x, y, accuracy: bool = False):
        if self.classify:
            return evaluate_classifier(model, x, y, accuracy)
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(x), EVAL_CHUNK):
                target = y[start:start + EVAL_CHUNK]
                total += F.mse_loss(model(x[start:start + EVAL_CHUNK]), target,
                                    reduction="sum").item()
                count += target.numel()
        return total / max(count, 1)

    def test_metrics(self, model):
        if self.classify:
            loss, accuracy = self.evaluate(model, self.data.x_test, self.data.y_test, accuracy=True)
            return {"test_loss": loss, "test_accuracy": accuracy}
        return {"test_loss": self.evaluate(model, self.data.x_test, self.data.y_test)}


def lm_batch_loss(forward, batch) -> Tensor:
    """``batch = (inputs, targets, carrier)``: mean cross-entropy per token of the
    window, starting from the carrier's hidden state; the window's final hidden
    state (detached) is stored back in the carrier for the next window."""
    inputs, targets, carrier = batch
    logits, hidden = forward(inputs, carrier.hidden)
    carrier.hidden = tuple(h.detach() for h in hidden)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class PennTreebankTask(Task):
    """Word-level language modelling on Penn Treebank.

    ``training.batch_size`` parallel sequences (40) read in windows of
    ``dataset.bptt`` tokens (70); the training hidden state is carried across
    windows (detached). The validation batch of each hyperstep is the next
    window of the validation stream, with its own carried hidden state. Whole
    splits are evaluated window by window from a zero state, in eval mode
    (no dropout); ``test_perplexity = exp(test_loss)``. Algorithms without a
    validation split train on the training stream followed by the validation
    stream.
    """

    metrics = ("test_perplexity",)

    def __init__(self, config, data_dir, device):
        super().__init__(config, data_dir, device)
        from onepass.data.ptb import batchify, load_ptb
        if self.batch_size is None:
            raise ValueError("penn_treebank needs training.batch_size (parallel sequences, 40)")
        bptt = config["dataset"]["bptt"]
        data = load_ptb(data_dir, batch_size=self.batch_size, bptt=bptt)
        if self.split:
            train = data.train
        else:
            streams = [data.train.t().reshape(-1), data.valid.t().reshape(-1)]
            train = batchify(torch.cat(streams), self.batch_size)
        self.data = data.to(self.device)
        self.train_source = train.to(self.device)
        self.n_inputs = self.n_outputs = data.vocab_size
        self.bptt = bptt
        self.sampler = WindowSampler(self.train_source, bptt)
        self.val_sampler = WindowSampler(self.data.valid, bptt)
        self.last_val_batch = None     # (inputs, targets, hidden before the window)

    def tuner_loss(self) -> dict:
        return {"batch_loss": lm_batch_loss}

    def val_batch(self):
        inputs, targets, carrier = self.val_sampler.next()
        self.last_val_batch = (inputs, targets, carrier.state())
        return inputs, targets, carrier

    def evaluate_stream(self, model, source: Tensor) -> float:
        """Mean cross-entropy per token over a whole batchified stream."""
        total, count, hidden = 0.0, 0, None
        with torch.no_grad():
            for start in range(0, source.shape[0] - 1, self.bptt):
                length = min(self.bptt, source.shape[0] - 1 - start)
                logits, hidden = model(source[start:start + length], hidden)
                targets = source[start + 1:start + 1 + length]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         reduction="sum").item()
                count += targets.numel()
        return total / max(count, 1)

    def losses_now(self, model, train_loss):
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                train = self.evaluate_stream(model, self.train_source) if train_loss is None else train_loss
                if not self.split:
                    val = None
                elif train_loss is None or self.full_validation or self.last_val_batch is None:
                    val = self.evaluate_stream(model, self.data.valid)
                else:
                    inputs, targets, hidden = self.last_val_batch
                    logits, _ = model(inputs, hidden)
                    val = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          targets.reshape(-1)).item()
                test = self.evaluate_stream(model, self.data.test)
            finally:
                model.train(was_training)
        return {"train_loss": train, "val_loss": val, "test_loss": test,
                "test_perplexity": _perplexity(test)}

    def state_dict(self) -> dict:
        return {"val_sampler": self.val_sampler.state_dict(),
                "last_val_batch": self.last_val_batch}

    def load_state_dict(self, state: Mapping) -> None:
        self.val_sampler.load_state_dict(state["val_sampler"])
        last = state.get("last_val_batch")
        if last is not None:
            inputs, targets, hidden = last
            hidden = None if hidden is None else tuple(h.to(self.device) for h in hidden)
            last = (inputs.to(self.device), targets.to(self.device), hidden)
        self.last_val_batch = last


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


TASKS: dict[str, type[Task]] = {
    "uci": UCITask, "fashion_mnist": FashionMNISTTask, "penn_treebank": PennTreebankTask,
    "cifar10": CIFAR10Task, PYTHON: PythonTask,
}
"""``dataset.kind`` → task class."""


def make_task(config: Mapping, data_dir: str | os.PathLike | None, device,
              population: int | None = None) -> Task:
    """The task of a resolved ``config``, its data loaded onto ``device``;
    ``population=P``: for ``P`` members trained as one population (UCI only).

    Raises ``FileNotFoundError`` (naming the download command) for missing data.
    """
    kind = config["dataset"]["kind"]
    if kind not in TASKS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {', '.join(TASKS)}")
    if population is None:
        return TASKS[kind](config, data_dir, device)
    if kind != "uci":
        raise ValueError(f"populations train UCI MLPs only, not dataset kind {kind!r}")
    return UCITask(config, data_dir, device, population=population)


def check_data(config: Mapping, data_dir=None) -> None:
    """Raise ``FileNotFoundError`` (saying where it looked and how to download)
    when the dataset of ``config`` is missing; cheap for present data."""
    kind, name = config["dataset"]["kind"], config["dataset"]["name"]
    if kind == PYTHON or config["model"]["kind"] == PYTHON:
        _check_targets(config, data_dir)
    if kind == "uci":
        from onepass.data.uci import load_uci, uci_path
        if not uci_path(name, data_dir).is_file():
            load_uci(name, data_dir)
    elif kind == "fashion_mnist":
        from onepass.data.fashion_mnist import FASHION_MNIST_FILES, fashion_mnist_dir
        from onepass.data.paths import DATA_DIR_RULES
        folder = fashion_mnist_dir(data_dir)
        for file in FASHION_MNIST_FILES:
            if not (folder / file).is_file():
                raise FileNotFoundError(f"Fashion-MNIST file not found at {folder / file}; "
                                        f"{DATA_DIR_RULES}. Fetch it with `onepass download "
                                        "fashion_mnist` (or add --data-dir DIR).")
    elif kind == "penn_treebank":
        from onepass.data.paths import DATA_DIR_RULES
        from onepass.data.ptb import PTB_SPLITS, ptb_path
        for split in PTB_SPLITS:
            path = ptb_path(split, data_dir)
            if not path.is_file():
                raise FileNotFoundError(f"Penn Treebank file not found at {path}; {DATA_DIR_RULES}. "
                                        "Fetch it with `onepass download ptb` (or add --data-dir DIR).")
    elif kind == "cifar10":
        from onepass.data.cifar10 import cifar10_dir
        from onepass.data.paths import DATA_DIR_RULES
        path = cifar10_dir(data_dir) / "test_batch"
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 file not found at {path}; {DATA_DIR_RULES}. "
                                    "Fetch it with `onepass download cifar10` (or add --data-dir DIR).")


def _check_targets(config: Mapping, data_dir) -> None:
    """Import and call a config's python targets once (your data: the splits and
    the model's output on them), on the CPU, leaving the global RNGs as they were;
    raises :class:`~onepass.experiment.python_targets.TargetError` (one line)."""
    from onepass.experiment.python_targets import build_model, fixed_seed
    with fixed_seed(int(config["seed"])):
        if config["dataset"]["kind"] == PYTHON:
            task = make_task(config, data_dir, "cpu")
            torch.manual_seed(config["seed"])
            task.build_model()
        else:
            build_model(config)


__all__ = ["BatchSampler", "CIFAR10Task", "ClassificationTask", "FashionMNISTTask", "HiddenCarrier",
           "PennTreebankTask", "PythonTask", "TASKS", "Task", "TensorTask", "UCITask",
           "WindowSampler", "check_data", "evaluate_classifier", "lm_batch_loss", "make_task"]
