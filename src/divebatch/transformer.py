"""A small decoder-only transformer language model (``model.name=transformer_lm``).

GPT-style (Radford et al., 2019): token and learned position embeddings, ``depth`` pre-LayerNorm
blocks (causal multi-head self-attention through torch's ``F.scaled_dot_product_attention``, then
a 4x MLP with GELU, each in a residual branch), a final LayerNorm and a linear head. No dropout
and no BatchNorm, so a sample's gradient depends on that sample alone and the per-sample
gradients of :mod:`divebatch.method.persample` are those of the update; no in-place operations.

Input (B, T) int64 token ids with T <= the context length; output (B, V, T) float logits: the
class axis second, as ``nn.CrossEntropyLoss`` expects with a (B, T) target, so the trainer's
criterion is the mean next-token cross-entropy over the batch's B * T positions (the mean over
sequences of each sequence's mean token loss, sequences being of equal length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divebatch.errors import ConfigError


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one (C -> 3C) projection, SDPA with ``is_causal=True``,
    an output projection.

    Args:
        width: C, model width (must be divisible by ``heads``).
        heads: attention heads.
    Input and output (B, T, C) float.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C / heads)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)) (MLP width 4C)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only character (or token) language model.

    Args:
        vocab_size: V, number of token ids (the text data set's ``num_classes``).
        context: maximum sequence length T (the data set's ``data.seq_len``).
        width: C, embedding width (``model.width``).
        depth: number of blocks (``model.depth``).
        heads: attention heads per block (``model.heads``; must divide ``width``).
    Raises:
        ConfigError (a ValueError): ``width`` not divisible by ``heads``, or a size < 1 (names the key).
    Initialisation: normal(0, 0.02) for linear and embedding weights, zero biases, and the
    residual output projections scaled by 1 / sqrt(2 depth) (GPT-2).
    """

    def __init__(self, vocab_size: int, context: int, width: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        for key, value in (
            ("model.width", width),
            ("model.depth", depth),
            ("model.heads", heads),
            ("data.seq_len", context),
            ("vocab_size", vocab_size),
        ):
            if value < 1:
                raise ConfigError.of(key, value, "an integer >= 1")
        if width % heads:
            raise ConfigError.of("model.heads", heads, f"a divisor of model.width={width}")
        self.context = context
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor) -> Tensor:
        """(B, T) int64 token ids -> (B, V, T) logits. Raises ValueError when T > context."""
        t = idx.shape[-1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens exceeds the model's context of {self.context} (data.seq_len)")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.ln_f(self.blocks(x))).transpose(-1, -2)
