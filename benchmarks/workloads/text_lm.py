"""Byte-level language modelling of real text every machine has: a fixed, sorted
list of the Python standard library's own source files (this interpreter's;
its version is recorded with the result). The files are concatenated in that
order; the first 80% of the bytes train, the next 10% validate, the last 10%
test. A small causal transformer (2 layers, width 64, 4 heads, context 64),
400 updates of 32 windows, test cross-entropy in nats per byte."""
from __future__ import annotations

import functools
import math
import platform
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Data, Workload

FILES = ("abc.py", "bisect.py", "calendar.py", "colorsys.py", "contextlib.py", "copy.py", "csv.py",
         "dataclasses.py", "fnmatch.py", "fractions.py", "functools.py", "glob.py", "heapq.py",
         "numbers.py", "operator.py", "queue.py", "random.py", "shlex.py", "string.py", "textwrap.py")
CONTEXT, STRIDE, VAL_WINDOWS = 64, 32, 128


def _windows(tokens: torch.Tensor, stride: int) -> torch.Tensor:
    n = (len(tokens) - CONTEXT - 1) // stride + 1
    index = torch.arange(n)[:, None] * stride + torch.arange(CONTEXT + 1)[None, :]
    return tokens[index]


@functools.lru_cache(maxsize=1)
def load() -> Data:
    root = Path(sysconfig.get_paths()["stdlib"])
    text = b"".join((root / name).read_bytes() for name in FILES)
    tokens = torch.tensor(list(text), dtype=torch.int64)
    a, b = int(0.8 * len(tokens)), int(0.9 * len(tokens))
    train, val, test = _windows(tokens[:a], STRIDE), _windows(tokens[a:b], CONTEXT), _windows(tokens[b:], CONTEXT)
    val = val[:VAL_WINDOWS]
    return Data(train[:, :-1], train[:, 1:], val[:, :-1], val[:, 1:], test[:, :-1], test[:, 1:],
                info={"python": platform.python_version(), "files": list(FILES), "bytes": len(text)})


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # explicit attention (matmul + softmax): twice differentiable on every backend
        scores = q @ k.transpose(-1, -2) / math.sqrt(c // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attention = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class ByteTransformer(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, vocabulary: int = 256):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(torch.zeros(CONTEXT, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocabulary)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def workloads() -> list[Workload]:
    return [Workload(name="text_lm", kind="language_model", family="text", steps=400, batch=32,
                     build_data=load, build_model=lambda seed: ByteTransformer())]
