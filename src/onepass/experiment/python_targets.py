"""Your own model and data in a run: ``"package.module:function"`` targets.

A config names them with ``kind: python`` (the keys are in
:data:`onepass.experiment.config.SCHEMA`)::

    python_path: ["."]                 # folders put on sys.path, relative to this file
    dataset:
      kind: python
      name: sines                      # your name for the data (run records, the report)
      target: my_project.data:splits   # returns the three splits
      kwargs: {n_train: 200}
    model:
      kind: python                     # or mlp: the paper's MLP on your data
      target: my_project.model:build   # returns a torch.nn.Module
      kwargs: {hidden: 32}
    training:
      loss: mse                        # or cross_entropy

**The data target** is called as ``target(**dataset.kwargs)`` and returns a
mapping ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` (``"validation"``
may stand for ``"val"``) of tensors or NumPy arrays, one example per row of
``x`` and ``y``. Floating inputs become ``torch.get_default_dtype()``
(float32); integer inputs (token ids) stay integer. With ``training.loss:
mse`` the targets are floats and a 1-D ``y`` is read as one column ``(n, 1)``:
the model's output must have the targets' shape. With ``cross_entropy`` they
are integer class labels ``0 .. C-1`` of shape ``(n,)`` and the model returns
logits ``(n, C)``; the log rows then carry ``test_accuracy``. The function is
called with torch's, NumPy's and ``random``'s global generators seeded with 0
(and restored afterwards), so unseeded draws give the same data in every
process; it is called once per run, and once more by ``onepass train`` /
``onepass sweep`` to check it before any run starts. Inputs are not
standardised for you.

**The model target** is called as ``target(**model.kwargs)`` right after
``torch.manual_seed(seed)`` (the config's seed: initialisation ``i`` of a sweep
builds the same weights for every algorithm) and returns a
:class:`torch.nn.Module` with trainable parameters whose ``forward`` takes a
batch of ``x`` and returns the predictions. It may be trained on the data
targets above or on the shipped ``uci``, ``fashion_mnist`` and ``cifar10``
families.

**Importable everywhere.** Every process that builds a run imports the
targets itself: ``onepass train``, the local workers of ``onepass sweep``,
Ray workers, SLURM jobs, search trials. The module must therefore be
importable in each: installed (``pip install -e .``), on ``PYTHONPATH``, or in
a folder listed in the config's ``python_path`` (entries relative to the
config file become absolute paths in the resolved config, so every process
finds them as long as the folder is on a file system it sees).

**Errors** are :class:`TargetError` (a
:class:`~onepass.experiment.config.ConfigError`): one line naming the key, the
target and what was expected, which the CLI prints as ``onepass: error: ...``
with exit status 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import random
import sys
from contextlib import contextmanager
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from onepass.data.splits import Splits
from onepass.experiment.config import ConfigError

SPLITS = ("train", "val", "test")
"""The keys of a data target's mapping (``"validation"`` may stand for ``"val"``)."""
SPLIT_ALIASES = {"validation": "val"}
EXPECTED_SPLITS = ("a mapping {'train': (x, y), 'val': (x, y), 'test': (x, y)} of tensors or "
                   "NumPy arrays")
EXPECTED_MODEL = "a torch.nn.Module"


class TargetError(ConfigError):
    """A ``dataset.target`` / ``model.target`` that cannot be imported or
    called, or returned the wrong kind of object; the message is one line
    naming the key, the target and what was expected."""


# ----------------------------------------------------------------- import

def resolve_target(target: str, key: str, python_path: Sequence[str] = ()) -> Callable:
    """The callable ``target`` (``"package.module:function"``, the attribute may
    be dotted) names, imported with ``python_path`` put in front of ``sys.path``.

    ``key`` (``"model.target"``) names the config key in the error messages.
    """
    def fail(text: str) -> TargetError:
        return TargetError(f"{key} {target!r}: {text}")

    module_name, sep, attribute = str(target).partition(":")
    if not sep or not module_name or not attribute:
        raise fail("must be 'package.module:function'")
    for folder in reversed([str(f) for f in python_path]):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    importlib.invalidate_caches()  # folders and files made since the interpreter started
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            where = f"; python_path: {list(python_path)}" if python_path else ""
            raise fail(f"cannot import module {module_name!r} (no module named {missing!r}); it "
                       "must be importable in every process that runs: install it (pip install "
                       f"-e), put its folder on PYTHONPATH, or list the folder in python_path"
                       f"{where}") from None
        raise fail(f"importing module {module_name!r} failed: {_one_line(error)}") from error
    except Exception as error:  # noqa: BLE001  (a SyntaxError, an error the module raised, ...)
        raise fail(f"importing module {module_name!r} failed: {_one_line(error)}") from error
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            names = [n for n in dir(value) if not n.startswith("_")]
            hint = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            owner = f"module {module_name!r}" if value is module else repr(value)
            raise fail(f"{owner} has no attribute {part!r}"
                       + (f" (did you mean {hint[0]!r}?)" if hint else "")
                       + "; expected a function")
        value = getattr(value, part)
    if not callable(value):
        raise fail(f"{attribute!r} is of type {type(value).__name__}, not a function")
    return value


def call_target(function: Callable, target: str, key: str, kwargs: Mapping[str, Any]) -> Any:
    """``function(**kwargs)``; keyword arguments it does not take, and anything
    it raises, become a one-line :class:`TargetError` (the original chained)."""
    kwargs_key = key.rsplit(".", 1)[0] + ".kwargs"
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            raise TargetError(f"{key} {target!r} cannot be called with {kwargs_key} "
                              f"{dict(kwargs)!r}: {error}") from None
    try:
        return function(**kwargs)
    except Exception as error:  # noqa: BLE001  (the user's code: one line, cause chained)
        raise TargetError(f"{key} {target!r} raised {_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


@contextmanager
def fixed_seed(seed: int):
    """Seed torch's CPU generator, NumPy's and ``random``'s global ones with
    ``seed`` for the block; restore all three afterwards."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    torch_state = torch.get_rng_state()
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


# ------------------------------------------------------------------- data

@dataclasses.dataclass
class PythonSplits(Splits):
    """The splits a ``dataset.target`` returned, checked (see the module docs).
    ``n_classes``: the number of classes (cross-entropy), else ``None``."""

    n_classes: int | None = None

    @property
    def n_inputs(self) -> int:
        """Features per example (the second dimension of ``x``)."""
        return int(self.x_train.shape[1]) if self.x_train.dim() >= 2 else 1

    @property
    def n_outputs(self) -> int:
        """Model outputs: the classes, or the targets' columns."""
        if self.n_classes is not None:
            return self.n_classes
        return int(self.y_train.shape[1]) if self.y_train.dim() >= 2 else 1


def load_splits(config: Mapping) -> PythonSplits:
    """Call the ``dataset.target`` of a resolved ``config`` (kind ``python``)
    with its ``dataset.kwargs`` and check what it returned; raises :class:`TargetError`."""
    dataset = config["dataset"]
    target, key = dataset["target"], "dataset.target"
    function = resolve_target(target, key, config.get("python_path") or ())
    with fixed_seed(0):
        returned = call_target(function, target, key, dataset["kwargs"])
    return check_splits(returned, target, config["training"]["loss"])


def check_splits(returned: Any, target: str, loss: str) -> PythonSplits:
    """``returned`` (what ``target`` gave) as :class:`PythonSplits` for ``loss``
    (``mse`` or ``cross_entropy``); raises :class:`TargetError`."""
    def fail(text: str) -> TargetError:
        return TargetError(f"dataset.target {target!r} returned {text}; expected {EXPECTED_SPLITS}"
                           + (" with integer class labels as y (training.loss cross_entropy)"
                              if loss == "cross_entropy" else ""))

    if not isinstance(returned, Mapping):
        raise fail(f"a {type(returned).__name__}")
    named: dict[str, Any] = {}
    for name, value in returned.items():
        split = SPLIT_ALIASES.get(name, name)
        if split not in SPLITS:
            raise fail(f"a mapping with the unknown key {name!r}")
        if split in named:
            raise fail("a mapping with both 'val' and 'validation'")
        named[split] = value
    missing = [s for s in SPLITS if s not in named]
    if missing:
        raise fail(f"a mapping without {missing[0]!r}")
    tensors: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        pair = named[split]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise fail(f"{split!r}: a {type(pair).__name__}, not a pair (x, y)")
        x, y = (_tensor(v, f"{split!r}: {which}", fail) for v, which in zip(pair, "xy"))
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
            raise fail(f"{split!r}: x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)} "
                       "(both need the same number n ≥ 1 of rows)")
        if x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        elif x.is_complex() or x.dtype == torch.bool:
            raise fail(f"{split!r}: x of dtype {x.dtype}")
        if loss == "cross_entropy":
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
                raise fail(f"{split!r}: y of dtype {y.dtype} and shape {tuple(y.shape)}, not "
                           "integer labels of shape (n,)")
            y = y.to(torch.int64)
            if int(y.min()) < 0:
                raise fail(f"{split!r}: a negative class label ({int(y.min())})")
        else:
            if y.is_complex() or y.dtype == torch.bool:
                raise fail(f"{split!r}: y of dtype {y.dtype}")
            y = y.to(torch.get_default_dtype())
            if y.dim() == 1:
                y = y.unsqueeze(1)
        tensors[f"x_{split}"], tensors[f"y_{split}"] = x, y
    for which in "xy":
        shapes = {s: tuple(tensors[f"{which}_{s}"].shape[1:]) for s in SPLITS}
        if len(set(shapes.values())) > 1:
            raise fail(f"splits whose {which} rows differ in shape ({shapes})")
    n_classes = None
    if loss == "cross_entropy":
        n_classes = 1 + max(int(tensors[f"y_{s}"].max()) for s in SPLITS)
    return PythonSplits(**tensors, n_classes=n_classes)


def _tensor(value: Any, where: str, fail) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise fail(f"{where} is a NumPy array of objects")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise fail(f"{where} is a {type(value).__name__}, not a tensor")


# ------------------------------------------------------------------ model

def build_model(config: Mapping) -> nn.Module:
    """Call the ``model.target`` of a resolved ``config`` (kind ``python``) with
    its ``model.kwargs``; the caller seeds torch first. Raises :class:`TargetError`
    unless it returns a :class:`torch.nn.Module` with trainable parameters."""
    model_config = config["model"]
    target, key = model_config["target"], "model.target"
    function = resolve_target(target, key, config.get("python_path") or ())
    model = call_target(function, target, key, model_config["kwargs"])
    if not isinstance(model, nn.Module):
        raise TargetError(f"{key} {target!r} returned a {type(model).__name__}; expected "
                          f"{EXPECTED_MODEL}")
    if not any(p.requires_grad for p in model.parameters()):
        raise TargetError(f"{key} {target!r} returned a {type(model).__name__} without trainable "
                          f"parameters; expected {EXPECTED_MODEL} with parameters to train")
    return model


def check_output(model: nn.Module, splits: PythonSplits, config: Mapping) -> None:
    """Run ``model`` (in eval mode, no gradients) on two training examples and
    check its output against the targets; raises :class:`TargetError`."""
    model_config = config["model"]
    who = (f"model.target {model_config['target']!r}" if model_config["kind"] == "python"
           else f"model.kind {model_config['kind']}")
    data = f"dataset.target {config['dataset']['target']!r}"
    device = next(model.parameters()).device
    x, y = splits.x_train[:2].to(device), splits.y_train[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:  # noqa: BLE001
        raise TargetError(f"{who} failed on two training inputs of {data} (x of shape "
                          f"{tuple(x.shape)}): {_one_line(error)}") from error
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TargetError(f"{who}: its forward returned a {type(out).__name__}; expected a tensor "
                          "of predictions")
    if splits.n_classes is not None:
        if out.dim() != 2 or out.shape[0] != len(x) or out.shape[1] < splits.n_classes:
            raise TargetError(f"{who}: its output on 2 inputs has shape {tuple(out.shape)}; "
                              f"expected logits of shape (2, {splits.n_classes}) for the "
                              f"{splits.n_classes} classes of {data} (training.loss cross_entropy)")
    elif tuple(out.shape) != tuple(y.shape):
        raise TargetError(f"{who}: its output on 2 inputs has shape {tuple(out.shape)}; expected "
                          f"the shape of the targets of {data}, {tuple(y.shape)} (training.loss "
                          "mse compares them element by element)")


__all__ = ["EXPECTED_MODEL", "EXPECTED_SPLITS", "PythonSplits", "SPLITS", "TargetError",
           "build_model", "call_target", "check_output", "check_splits", "fixed_seed",
           "load_splits", "resolve_target"]
