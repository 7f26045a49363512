"""The paper's Penn Treebank model: a word-level LSTM language model.

The architecture is the "medium" model of the PyTorch ``word_language_model``
example (after Zaremba et al., 2014): embedding → dropout → multi-layer
``nn.LSTM`` (dropout between layers) → dropout → linear decoder to the
vocabulary. Tokens are time-major, ``(seq_len, batch)``.

Second-order derivatives on GPU: cuDNN's fused RNN kernel has no double
backward, so a Hessian–vector product through it (the Neumann steps and
unrolled steps of :class:`onepass.Tuner`) fails. While
:attr:`LSTMLanguageModel.double_backward` is true (the default) and the input
is on CUDA with gradients enabled, :meth:`~LSTMLanguageModel.forward` runs the
LSTM with cuDNN disabled; PyTorch's native CUDA LSTM cell is twice
differentiable. This costs speed on every training step, including those the
tuner only differentiates once, because the model cannot know which step will
be differentiated twice; set ``double_backward = False`` for plain first-order
training. On CPU, or with gradients off (evaluation), nothing changes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

Hidden = tuple[Tensor, Tensor]


class LSTMLanguageModel(nn.Module):
    """Embedding → ``num_layers``-layer LSTM → linear decoder, with dropout.

    Args:
        vocab_size: number of token ids (input and output size).
        embedding_dim, hidden_dim: widths; the paper uses 650 and 650.
        num_layers: stacked LSTM layers (2 in the paper).
        dropout: probability applied to the embeddings, between LSTM layers
            and to the LSTM output (0.5 in the paper).
        tie_weights: share the embedding matrix with the decoder's weight
            (Press & Wolf, 2017); needs ``embedding_dim == hidden_dim``.
        double_backward: run the LSTM without cuDNN on CUDA when gradients are
            enabled, so that it can be differentiated twice (module docs).

    Initialisation as in the PyTorch example: embedding and decoder weights
    ``U(-0.1, 0.1)``, decoder bias 0, LSTM weights PyTorch's default.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 650,
        hidden_dim: int = 650,
        num_layers: int = 2,
        dropout: float = 0.5,
        tie_weights: bool = False,
        double_backward: bool = True,
    ):
        super().__init__()
        if tie_weights and embedding_dim != hidden_dim:
            raise ValueError(
                f"tie_weights needs embedding_dim == hidden_dim, got {embedding_dim} and {hidden_dim}"
            )
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.double_backward = double_backward
        self.drop = nn.Dropout(dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero ``(h, c)``, each ``(num_layers, batch_size, hidden_dim)``, like the weights."""
        weight = self.decoder.bias
        shape = (self.num_layers, batch_size, self.hidden_dim)
        return weight.new_zeros(shape), weight.new_zeros(shape)

    def _lstm_backend(self, inputs: Tensor):
        """cuDNN off when a double backward may follow on CUDA (module docs), else a no-op."""
        if self.double_backward and inputs.is_cuda and torch.is_grad_enabled():
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()

    def forward(self, tokens: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """Logits ``(seq_len, batch, vocab_size)`` and the final hidden state.

        ``tokens`` are int64 ids of shape ``(seq_len, batch)``; ``hidden`` is
        an ``(h, c)`` pair as from :meth:`init_hidden` (``None``: zeros).
        Detach the returned state with :func:`detach_hidden` before carrying it
        into the next window.
        """
        embedded = self.drop(self.embedding(tokens))
        with self._lstm_backend(embedded):
            output, hidden = self.lstm(embedded, hidden)
        return self.decoder(self.drop(output)), hidden


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph behind a carried hidden state (truncated back-propagation through time)."""
    return tuple(h.detach() for h in hidden)


__all__ = ["LSTMLanguageModel", "detach_hidden"]
