import torch
from torch import nn
from torch.nn import functional as F

from onepass.models import ResNet18, build_model


def test_parameter_count_of_the_cifar_variant():
    model = ResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 8 * 2 + 3
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2] * 4


def test_build_model():
    model = build_model({"kind": "resnet18"}, 3, 100)
    assert isinstance(model, ResNet18) and model.linear.out_features == 100


def test_output_shape_and_float64_backward():
    torch.manual_seed(0)
    model = ResNet18().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    logits = model(x)
    assert logits.shape == (2, 10) and logits.dtype == torch.float64
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads)
    assert model.linear.weight.grad.abs().sum() > 0 and model.conv1.weight.grad.abs().sum() > 0
