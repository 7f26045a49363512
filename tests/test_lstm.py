import pytest
import torch
from torch.func import functional_call
from torch.nn import functional as F

from onepass import Tuner
from onepass.core.rules import clip_gradients
from onepass.models import LSTMLanguageModel, build_model, detach_hidden

VOCAB = 20


def tiny_model(**kwargs):
    torch.manual_seed(0)
    options = dict(embedding_dim=8, hidden_dim=8, dropout=0.0) | kwargs
    return LSTMLanguageModel(VOCAB, **options).double()


def tokens(seed, steps=6, batch=3):
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB, (steps + 1, batch), generator=generator)
    return stream[:-1], stream[1:]


def batch_loss(forward, batch):
    """Cross-entropy of a window, the model started from a zero hidden state."""
    inputs, targets = batch
    logits, _ = forward(inputs)
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def test_shapes_hidden_state_and_build_model():
    model = tiny_model(num_layers=2)
    inputs, _ = tokens(1)
    hidden = model.init_hidden(3)
    assert [h.shape for h in hidden] == [(2, 3, 8), (2, 3, 8)] and hidden[0].dtype == torch.float64
    logits, new_hidden = model(inputs, hidden)
    assert logits.shape == (6, 3, VOCAB)
    assert new_hidden[0].requires_grad and not any(h.requires_grad for h in detach_hidden(new_hidden))
    torch.testing.assert_close(model(inputs)[0], logits)  # None means a zero state

    built = build_model({"kind": "lstm", "embedding_dim": 8, "hidden_dim": 8, "tie_weights": True},
                        VOCAB, VOCAB)
    assert built.decoder.weight is built.embedding.weight
    assert built.lstm.num_layers == 2 and built.drop.p == 0.5
    with pytest.raises(ValueError, match="n_outputs=10"):
        build_model({"kind": "lstm"}, VOCAB, 10)
    with pytest.raises(ValueError, match="tie_weights"):
        LSTMLanguageModel(VOCAB, embedding_dim=4, hidden_dim=8, tie_weights=True)


def test_paper_model_size():
    model = LSTMLanguageModel(10_000)
    lstm = 2 * 4 * (650 * 650 + 650 * 650 + 2 * 650)
    assert sum(p.numel() for p in model.parameters()) == 10_000 * 650 + lstm + 650 * 10_000 + 10_000


def test_clip_gradients_matches_torch_and_is_differentiable():
    torch.manual_seed(0)
    grads = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
             torch.randn(5, dtype=torch.float64, requires_grad=True))
    clipped = clip_gradients(grads, 0.25)
    copies = [g.detach().clone() for g in grads]
    for c in copies:
        c.grad = c.clone()
    torch.nn.utils.clip_grad_norm_(copies, 0.25)
    for ours, theirs in zip(clipped, copies):
        torch.testing.assert_close(ours, theirs.grad)
    assert torch.autograd.gradcheck(lambda a, b: clip_gradients((a, b), 0.25), grads)
    small = tuple(g.detach() * 1e-3 for g in grads)
    for ours, g in zip(clip_gradients(small, 0.25), small):
        torch.testing.assert_close(ours, g)


def test_tuner_hypergradient_through_lstm_is_exact():
    model = tiny_model()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    train, val = tokens(1), tokens(2)
    lr, weight_decay = 0.3, 1e-2
    tuner = Tuner(model, batch_loss=batch_loss, method="neumann", neumann_terms=1, update_interval=1,
                  hyperparameters=dict(lr=lr, weight_decay=weight_decay, momentum=0.9),
                  tune=("lr", "weight_decay"))
    result = tuner.step(train, val)

    # L_V(u(w, λ)) for one SGD step from the same weights, differentiated by plain autograd
    # with respect to the raw hyperparameters a = log10 lr and b = log10 weight_decay.
    a = torch.tensor(lr, dtype=torch.float64).log10().requires_grad_()
    b = torch.tensor(weight_decay, dtype=torch.float64).log10().requires_grad_()
    weights = {name: w.clone().requires_grad_() for name, w in initial.items()}
    loss = batch_loss(lambda x: functional_call(model, weights, (x,)), train)
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    new = {name: w - 10 ** a * (g + 10 ** b * w) for (name, w), g in zip(weights.items(), grads)}
    val_loss = batch_loss(lambda x: functional_call(model, new, (x,)), val)
    exact = torch.autograd.grad(val_loss, (a, b))

    torch.testing.assert_close(result.val_loss, val_loss.detach())
    torch.testing.assert_close(result.hypergradient["lr"][0], exact[0])
    torch.testing.assert_close(result.hypergradient["weight_decay"][0], exact[1])
    assert exact[0].abs() > 1e-6 and exact[1].abs() > 1e-10
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), new[name].detach())


def test_cudnn_is_switched_off_only_where_a_double_backward_may_follow():
    class OnCuda:
        is_cuda = True

    model = tiny_model()
    enabled = torch.backends.cudnn.enabled
    with model._lstm_backend(OnCuda()):
        assert not torch.backends.cudnn.enabled
    assert torch.backends.cudnn.enabled == enabled
    with torch.no_grad(), model._lstm_backend(OnCuda()):
        assert torch.backends.cudnn.enabled == enabled
    model.double_backward = False
    with model._lstm_backend(OnCuda()):
        assert torch.backends.cudnn.enabled == enabled
