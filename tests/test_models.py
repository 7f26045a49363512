import pytest
import torch
from torch import nn

from onepass.models import MLP, build_model


def test_uci_mlp_parameter_count():
    model = MLP(8)
    assert sum(p.numel() for p in model.parameters()) == 8 * 50 + 50 + 50 + 1


def test_output_shapes():
    assert MLP(8)(torch.randn(5, 8)).shape == (5, 1)
    assert MLP(784, hidden=(50,), n_outputs=10)(torch.randn(3, 784)).shape == (3, 10)
    assert MLP(4, hidden=(16, 8), n_outputs=2)(torch.randn(7, 4)).shape == (7, 2)
    assert MLP(4, hidden=())(torch.randn(7, 4)).shape == (7, 1)


def test_batch_norm_variant():
    model = build_model({"kind": "mlp", "hidden": [50], "batch_norm": True}, 784, 10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 1
    buffers = dict(model.named_buffers())
    assert any(name.endswith("running_mean") for name in buffers)
    assert any(name.endswith("running_var") for name in buffers)
    assert model(torch.randn(4, 784)).shape == (4, 10)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in MLP(784).modules())


def test_build_model_matches_mlp():
    model = build_model({"kind": "mlp", "hidden": [50], "batch_norm": False}, 8, 1)
    assert sum(p.numel() for p in model.parameters()) == 501


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="resnet"):
        build_model({"kind": "resnet"}, 8, 1)
    with pytest.raises(ValueError, match="widht"):
        build_model({"kind": "mlp", "widht": 3}, 8, 1)
