"""The data: noisy waves over four inputs, as train / validation / test splits.

``onepass`` calls :func:`splits` (named in the config as
``dataset.target: my_project.data:splits``) with ``dataset.kwargs`` and expects a
mapping ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` of tensors.
"""
import torch


def waves(x: torch.Tensor) -> torch.Tensor:
    """The noiseless target of inputs ``x`` of shape ``(n, 4)``."""
    return torch.sin(2 * x[:, 0]) + 0.5 * torch.cos(3 * x[:, 1]) + 0.3 * x[:, 2] * x[:, 3]


def splits(n_train: int = 256, n_val: int = 64, n_test: int = 256, noise: float = 0.1,
           classes: int | None = None, seed: int = 0) -> dict:
    """Inputs uniform in ``[-1.5, 1.5]^4``, targets :func:`waves` plus Gaussian
    noise of standard deviation ``noise``, drawn from a generator seeded with
    ``seed`` (every process that calls this gets the same data).

    ``classes=None``: regression targets of shape ``(n, 1)`` (``training.loss: mse``).
    ``classes=C``: the noisy target cut at its quantiles into ``C`` class labels
    ``0 .. C-1`` of shape ``(n,)`` (``training.loss: cross_entropy``).
    """
    generator = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    x = torch.rand(n, 4, generator=generator) * 3 - 1.5
    y = waves(x) + noise * torch.randn(n, generator=generator)
    if classes is None:
        y = y.unsqueeze(1)
    else:
        edges = torch.quantile(y[:n_train], torch.linspace(0, 1, classes + 1)[1:-1])
        y = torch.bucketize(y, edges)
    cut = [n_train, n_train + n_val]
    return {"train": (x[:cut[0]], y[:cut[0]]),
            "val": (x[cut[0]:cut[1]], y[cut[0]:cut[1]]),
            "test": (x[cut[1]:], y[cut[1]:])}
