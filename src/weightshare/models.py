"""Small reference models with tied weights, shared by the gallery and the benchmarks.

:class:`GPT` is a decoder-only Transformer in the shape of GPT-2 whose token embedding
``wte`` and output projection ``lm_head`` are one parameter (Press & Wolf 2017, "Using
the Output Embedding to Improve Language Models", arXiv:1608.05859). Its default
configuration is GPT-2 small; build it on the meta device to inspect it for free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GPT", "GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a :class:`GPT`. The defaults are GPT-2 small (about 124M parameters)."""

    vocab_size: int = 50257  # GPT-2's byte-pair vocabulary
    context: int = 1024  # longest sequence, and so the number of position embeddings
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768  # must be divisible by n_head
    tie_embeddings: bool = True  # lm_head.weight is wte.weight


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which a position sees only earlier positions."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.d_model % config.n_head:
            raise ValueError(
                f"d_model={config.d_model} must be divisible by n_head={config.n_head}"
            )
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)  # each (B, T, d)
        heads = (batch, time, self.n_head, width // self.n_head)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(batch, time, width))
        return out


class MLP(nn.Module):
    """The 4x-wide feed-forward layer, with GPT-2's names ``c_fc`` and ``c_proj``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c_proj(self.gelu(self.c_fc(x)))
        return out


class Block(nn.Module):
    """Pre-norm Transformer block: attention, then a 4x-wide MLP, each residual."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """A GPT-2-shaped language model; ``lm_head.weight`` is ``wte.weight`` when tied.

    Examples
    --------
    >>> import torch
    >>> from weightshare.models import GPT, GPTConfig
    >>> tiny = GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, d_model=4)
    >>> model = GPT(tiny)
    >>> model.lm_head.weight is model.wte.weight
    True
    >>> model(torch.zeros(3, 8, dtype=torch.long)).shape  # logits (B, T, V)
    torch.Size([3, 8, 11])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # the tie: wte's values survive
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """GPT-2's initialisation, applied once to each parameter (tied ones too).

        ``named_parameters()`` yields a tied parameter once, under its first name,
        so the shared matrix is drawn once, as ``wte.weight``: N(0, 0.02²).
        """
        # The projections back into the residual stream (attn.proj, mlp.c_proj) are
        # scaled down by depth, as in GPT-2.
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():  # each object once
            if param.device.type == "meta":
                continue
            if name.endswith("bias"):
                param.zero_()
            elif name.startswith("ln") or ".ln_" in name:
                param.fill_(1.0)
            else:
                is_residual = name.endswith(("attn.proj.weight", "mlp.c_proj.weight"))
                param.normal_(0.0, residual_std if is_residual else 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, time, vocab_size) for token ids ``idx`` (B, T)."""
        time = idx.shape[1]
        if time > self.config.context:
            raise ValueError(
                f"sequence length {time} exceeds the context of {self.config.context}"
            )
        positions = torch.arange(time, device=idx.device)
        x = self.wte(idx) + self.wpe(positions)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits
