"""Penn Treebank word-level language modelling (Mikolov's ``simple-examples``).

Files live at ``<data dir>/ptb/simple-examples/data/ptb.{train,valid,test}.txt``
(see :func:`resolve_data_dir`), as unpacked from ``simple-examples.tgz``:
one sentence per line, words separated by spaces, rare words already replaced
by ``<unk>`` (10,000 distinct words with ``<eos>``).

Preparation follows the PyTorch ``word_language_model`` example: each line is
split on whitespace and ``<eos>`` appended; the words are numbered by a
vocabulary built from the training file in order of first appearance; each
split's token stream is cut into ``batch_size`` parallel sequences (a tensor
of shape ``(n_steps, batch_size)``, the tail that does not fill a row is
dropped) and read in windows of ``bptt`` time steps, each target being the
input shifted one step ahead. A model reads the windows in order and carries
its (detached) hidden state from one window to the next.

With ``<eos>`` the splits hold 929,589 (train), 73,760 (valid) and 82,430
(test) tokens; the protocol's 1,003,349 "train+val words" are train + valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from onepass.data.download import download, safe_extract
from onepass.data.paths import require_files, resolve_data_dir

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_ARCHIVE = "simple-examples.tgz"
PTB_SPLITS = ("train", "valid", "test")
# Tokens (with <eos>) per split of the official corpus. No digest of the
# archive has been verified, so download_ptb checks these counts instead.
PTB_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}
EOS = "<eos>"
UNK = "<unk>"


def ptb_path(split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``ptb.<split>.txt`` for ``split`` in ``("train", "valid", "test")``."""
    if split not in PTB_SPLITS:
        raise ValueError(f"unknown PTB split {split!r}; known: {', '.join(PTB_SPLITS)}")
    return resolve_data_dir(data_dir) / "ptb" / "simple-examples" / "data" / f"ptb.{split}.txt"


def read_words(path: str | os.PathLike) -> list[str]:
    """The token stream of a text file: each line's whitespace-separated words, then ``<eos>``."""
    words: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            words.extend(line.split())
            words.append(EOS)
    return words


class Vocabulary:
    """A bijection between words and ids ``0..len-1``.

    Built by :meth:`from_words` in order of first appearance. :meth:`encode`
    maps a word it does not know to the id of ``<unk>``.
    """

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words must be distinct")

    @classmethod
    def from_words(cls, stream: list[str]) -> "Vocabulary":
        """Number the distinct words of ``stream`` by first appearance, then ``<unk>``
        last if the stream lacks it (PTB's training file already has it)."""
        words = list(dict.fromkeys(stream))
        if UNK not in words:
            words.append(UNK)
        return cls(words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, stream: list[str]) -> torch.Tensor:
        """Ids (int64, 1-d) of ``stream``; unknown words become ``<unk>``."""
        unk = self.index[UNK]
        return torch.tensor([self.index.get(word, unk) for word in stream], dtype=torch.int64)

    def decode(self, ids) -> list[str]:
        """The words of a sequence of ids."""
        return [self.words[int(i)] for i in ids]


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-d token stream into ``batch_size`` parallel sequences.

    Returns ``(n_steps, batch_size)`` with ``n_steps = len(stream) //
    batch_size``: column ``j`` is the contiguous slice
    ``stream[j * n_steps:(j + 1) * n_steps]``; the last
    ``len(stream) % batch_size`` tokens are dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n_steps = len(stream) // batch_size
    if n_steps < 2:
        raise ValueError(
            f"{len(stream)} tokens make fewer than 2 steps of {batch_size} parallel sequences"
        )
    return stream[: n_steps * batch_size].view(batch_size, n_steps).t().contiguous()


def n_windows(source: torch.Tensor, bptt: int) -> int:
    """Number of windows :func:`iter_windows` yields: ``ceil((n_steps - 1) / bptt)``."""
    return -(-(source.shape[0] - 1) // bptt)


def iter_windows(source: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, targets)`` windows of a batchified ``(n_steps, batch)`` tensor.

    Window ``k`` starts at step ``i = k * bptt`` and spans ``L = min(bptt,
    n_steps - 1 - i)`` steps: ``inputs = source[i:i+L]`` and ``targets =
    source[i+1:i+1+L]``, both ``(L, batch)`` (time first, as ``nn.LSTM``
    expects). Only the last window can be shorter.
    """
    if bptt < 1:
        raise ValueError(f"bptt must be at least 1, got {bptt}")
    for start in range(0, source.shape[0] - 1, bptt):
        length = min(bptt, source.shape[0] - 1 - start)
        yield source[start:start + length], source[start + 1:start + 1 + length]


@dataclass
class PTBData:
    """The three PTB splits as batchified id tensors, with their vocabulary.

    ``train``, ``valid`` and ``test`` have shape ``(n_steps, batch_size)``
    (see :func:`batchify`); ``valid`` and ``test`` use ``eval_batch_size``
    columns. ``bptt`` is the window length of :meth:`windows`.
    """

    vocabulary: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    bptt: int

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids (the model's input and output size)."""
        return len(self.vocabulary)

    def split(self, name: str) -> torch.Tensor:
        """The batchified tensor of split ``name`` (``"train"``, ``"valid"`` or ``"test"``)."""
        if name not in PTB_SPLITS:
            raise ValueError(f"unknown PTB split {name!r}; known: {', '.join(PTB_SPLITS)}")
        return getattr(self, name)

    def windows(self, name: str = "train") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the ``(inputs, targets)`` windows of a split in order (one epoch)."""
        return iter_windows(self.split(name), self.bptt)

    def n_windows(self, name: str = "train") -> int:
        """Number of windows in one epoch of split ``name``."""
        return n_windows(self.split(name), self.bptt)

    def to(self, device) -> "PTBData":
        """Return a copy with the id tensors on ``device``."""
        return PTBData(self.vocabulary, self.train.to(device), self.valid.to(device),
                       self.test.to(device), self.bptt)


def load_ptb(
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 40,
    bptt: int = 70,
    *,
    eval_batch_size: int | None = None,
) -> PTBData:
    """Load the Penn Treebank prepared as in the protocol.

    The vocabulary comes from ``ptb.train.txt`` (see :meth:`Vocabulary.from_words`);
    ``ptb.valid.txt`` is the validation set and ``ptb.test.txt`` the test set,
    their unknown words mapped to ``<unk>``. The training stream is cut into
    ``batch_size`` parallel sequences, the validation and test streams into
    ``eval_batch_size`` (default ``batch_size``, so one hidden state shape
    serves every split).

    Raises ``FileNotFoundError`` naming the missing file and the command that
    fetches it, ``ValueError`` for a split too short for its batch size.
    """
    paths = {split: ptb_path(split, data_dir) for split in PTB_SPLITS}
    require_files(paths.values(), "Penn Treebank file", "ptb")
    streams = {split: read_words(path) for split, path in paths.items()}
    vocabulary = Vocabulary.from_words(streams["train"])
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    return PTBData(
        vocabulary=vocabulary,
        train=batchify(vocabulary.encode(streams["train"]), batch_size),
        valid=batchify(vocabulary.encode(streams["valid"]), eval_batch_size),
        test=batchify(vocabulary.encode(streams["test"]), eval_batch_size),
        bptt=bptt,
    )


def download_ptb(
    data_dir: str | os.PathLike | None = None,
    *,
    url: str = PTB_URL,
    expected_tokens: Mapping[str, int] | None = PTB_TOKENS,
    progress: bool = True,
) -> Path:
    """Fetch ``simple-examples.tgz`` and unpack it under ``<data dir>/ptb``; return that folder.

    The archive is unpacked with :func:`safe_extract`, so a member that would
    land outside the folder raises :class:`UnsafeArchiveError` and nothing is
    written. No archive digest is known, so the corpus is checked instead: the
    three ``ptb.*.txt`` files must exist and, unless ``expected_tokens`` is
    ``None``, hold those token counts (with ``<eos>``; :data:`PTB_TOKENS` by
    default); a failed check raises ``ValueError``.
    """
    root = resolve_data_dir(data_dir) / "ptb"
    archive = download(url, root / PTB_ARCHIVE, progress=progress)
    safe_extract(archive, root)
    for split in PTB_SPLITS:
        path = ptb_path(split, data_dir)
        if not path.is_file():
            raise ValueError(f"{archive} lacks simple-examples/data/ptb.{split}.txt")
        if expected_tokens is not None:
            count = len(read_words(path))
            if count != expected_tokens[split]:
                raise ValueError(
                    f"corrupt PTB file {path}: {count} tokens, expected {expected_tokens[split]}"
                )
    return root


__all__ = [
    "EOS",
    "PTBData",
    "PTB_TOKENS",
    "PTB_URL",
    "UNK",
    "Vocabulary",
    "batchify",
    "download_ptb",
    "iter_windows",
    "load_ptb",
    "n_windows",
    "ptb_path",
    "read_words",
]
