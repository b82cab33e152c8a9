"""GPT-2, exactly, in one file you can read top to bottom; and the modern options beside it.

The parameter names are OpenAI's (`transformer.wte`, `h.N.attn.c_attn`, `mlp.c_fc`, `ln_f`, ...), so a
GPT-2 checkpoint maps onto this model with a short table (see `gptscratch.hf`). Numerically the model
matches Hugging Face's GPT2LMHeadModel: pre-LayerNorm blocks, tanh-approximated GELU, learned positions,
and an LM head that shares its weight with the token embedding.

`GPTConfig`'s options after `vocab_multiple` (all off by default, so the defaults are GPT-2) are what
the field changed since: rotary positions, RMSNorm, per-head QK-norm, ReLU^2 or SwiGLU MLPs, an untied
head, a logit soft-cap and zero-initialised output projections (modded-nanogpt's record history and
nanochat measured each). Each is a small branch where it applies; read the GPT-2 path by skipping them.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptscratch.errors import UserError

# The choices of the options below, named once: the training config's flags and the HF converters use these.
PosEmbedding = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "relu2", "swiglu"]


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context: the size of the position table
    vocab_size: int = 50257  # tokens the tokenizer can produce
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has
    # Round the embedding table up to a multiple of this (64 gives 50304 for GPT-2): matmuls on such
    # shapes run faster on GPUs. The extra rows are never sampled and are dropped on export.
    vocab_multiple: int = 1
    # --- beyond GPT-2 (the defaults are GPT-2's) ---
    pos_embedding: PosEmbedding = "learned"  # learned: a position table (GPT-2); rope: rotary, relative positions
    rope_base: float = 10000.0
    norm: Norm = "layernorm"  # layernorm (GPT-2) or rmsnorm: no mean subtraction, no bias
    norm_weight: bool = True  # rmsnorm only: a learned gain; False is parameter-free
    qk_norm: bool = False  # RMSNorm of each head's q and k: bounded attention logits, a higher stable lr
    mlp: Mlp = "gelu"  # gelu (GPT-2), relu2 (ReLU squared) or swiglu (gated SiLU, 3 matrices)
    tie_embeddings: bool = True  # the LM head is the token embedding (GPT-2)
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap); 0: off
    zero_init_proj: bool = False  # output projections (and an untied head) start at zero

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.vocab_multiple)
        return (self.vocab_size + m - 1) // m * m

    @property
    def mlp_hidden(self) -> int:
        """4 * n_embd, as GPT-2; SwiGLU's three matrices get 2/3 of that (to a multiple of 32): equal size."""
        if self.mlp == "swiglu":
            return max(32, round(8 * self.n_embd / 3 / 32) * 32)
        return 4 * self.n_embd

    def validate(self) -> None:
        """What the model needs of a config wherever it comes from (a run's flags, a checkpoint's state.json,
        a transformers config.json), in the model's words: each field of its type (the options one of their
        choices), sizes and values it can compute with, and the checks across fields. The `train` flags
        check their own ranges first (gptscratch.train.config), so a user's mistake names its flag."""
        for f in fields(self):  # a config read from a damaged or hand-edited state.json may hold anything
            value, kind = getattr(self, f.name), _field_types()[f.name]
            if typing.get_origin(kind) is Literal:
                if value not in typing.get_args(kind):
                    raise UserError(f"model config {f.name}={value!r}: expected one of "
                                    f"{', '.join(typing.get_args(kind))}")
            elif not isinstance(value, (int, float) if kind is float else kind) or (
                    isinstance(value, bool) and kind is not bool):
                raise UserError(f"model config {f.name}={value!r}: expected {kind.__name__}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise UserError(f"model config {name}={getattr(self, name)}: expected a positive integer")
        if not (0 <= self.dropout < 1 and self.rope_base > 1 and 0 <= self.logit_softcap < math.inf):
            raise UserError(f"model config dropout={self.dropout}, rope_base={self.rope_base}, logit_softcap="
                            f"{self.logit_softcap}: expected a dropout in [0, 1), a rope base > 1 and a finite "
                            "soft-cap >= 0")
        if self.n_embd % self.n_head:
            raise UserError(f"model config n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos_embedding == "rope" and (self.n_embd // self.n_head) % 2:
            raise UserError(f"rotary positions need an even head size; n_embd/n_head = {self.n_embd // self.n_head}")
        if (self.norm == "rmsnorm" or self.qk_norm) and not hasattr(nn, "RMSNorm"):
            raise UserError(f"rmsnorm and qk_norm need torch >= 2.4 (nn.RMSNorm); this is torch {torch.__version__}")


@functools.cache
def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(GPTConfig)


RMS_EPS = 1e-6  # the epsilon of every RMSNorm (Qwen3's default, so exports match it exactly)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=RMS_EPS, elementwise_affine=config.norm_weight)
    return nn.LayerNorm(dim, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer; the half-split layout of Llama, Qwen and transformers).

    Each pair of channels (i, i + head_dim/2) of q and k is rotated by an angle proportional to the
    position, so q.k depends on positions only through their difference.
    """

    def __init__(self, head_dim: int, block_size: int, base: float):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq).repeat(1, 2)
        # buffers, not parameters: recomputed from the config, never saved in a checkpoint
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """x: (B, n_head, T, head_dim), at positions start ... start + T - 1.

        `start` is one int for every row, or a (B,) tensor when rows sit at different positions (a
        server decoding several requests together, see KVCache.lengths)."""
        T = x.size(2)
        if isinstance(start, int):
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        else:  # (B, T) positions -> (B, 1, T, head_dim): one angle per row, broadcast over heads
            pos = start[:, None] + torch.arange(T, device=start.device)
            cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer per layer.

    Decoding appends one token at a time, so attention costs O(T) per new token instead of the
    O(T^2) of recomputing the whole prefix.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype: torch.dtype, per_row: bool = False):
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, head_dim)
        # Per-row caches read past a short row's end (masked out); masked weights are 0, but 0 * NaN is NaN, and
        # torch.empty may hold NaN bit patterns: those caches start at zero.
        new = torch.zeros if per_row else torch.empty
        self.k = [new(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [new(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # tokens already stored
        # None: every row holds `pos` tokens. A (B,) tensor (per_row): row b holds lengths[b] tokens, and each
        # forward pass adds one token per row at its own position (a server decoding unrelated requests together).
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device) if per_row else None

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for `layer`; return all keys/values up to and including them."""
        T = k.size(2)
        end = self.pos + T
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    # --- rows at different positions: used by gptscratch.serve, not by training or `generate` ---

    def rows(self, start: int, stop: int, empty: bool = False) -> KVCache:
        """A view of rows start..stop-1 sharing this cache's memory (writes through it land here).
        `empty`: a view holding no tokens yet, with one position for all its rows, to prefill a prompt into."""
        view = KVCache.__new__(KVCache)
        view.k = [k[start:stop] for k in self.k]
        view.v = [v[start:stop] for v in self.v]
        view.pos = 0 if empty else self.pos
        view.lengths = None if empty or self.lengths is None else self.lengths[start:stop]
        return view

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Row `src`'s first `length` tokens into row `dst` (and its length, if rows have their own)."""
        for buf in (*self.k, *self.v):
            buf[dst, :, :length] = buf[src, :, :length]
        if self.lengths is not None:
            self.lengths[dst] = length

    def begin_rows_step(self) -> int:
        """Before a forward pass that adds one token per row: the longest row's length. The attention mask
        that step's layers share is made here, once (reading the lengths is a device sync on a GPU), and is
        None when every row has the same length (nothing to hide, and SDPA may take its fastest kernel)."""
        shortest, longest = torch.stack([self.lengths.min(), self.lengths.max()]).tolist()
        self.end = longest + 1
        self.mask = None
        if shortest != longest:  # row b sees its own lengths[b] tokens and the new one: (B, 1, 1, end)
            self.mask = (torch.arange(self.end, device=self.lengths.device)[None, :] <= self.lengths[:, None])[
                :, None, None, :]
        return longest

    def append_rows(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One new token per row, each written at its row's own length. Returns the keys and values up to
        the longest row, and the mask from `begin_rows_step` that lets each row see only its own tokens."""
        rows = torch.arange(k.size(0), device=k.device)
        self.k[layer][rows, :, self.lengths] = k[:, :, 0]
        self.v[layer][rows, :, self.lengths] = v[:, :, 0]
        return self.k[layer][:, :, : self.end], self.v[layer][:, :, : self.end], self.mask


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # q, k and v for all heads in one matmul, as OpenAI's checkpoint stores them
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True  # gets the scaled init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(config.dropout)
        head_dim = config.n_embd // config.n_head
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(head_dim, eps=RMS_EPS, elementwise_affine=config.norm_weight)
            self.k_norm = nn.RMSNorm(head_dim, eps=RMS_EPS, elementwise_affine=config.norm_weight)
        self.rotary = Rotary(head_dim, config.block_size, config.rope_base) if config.pos_embedding == "rope" else None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        ragged = cache is not None and cache.lengths is not None  # rows at different positions
        if self.rotary is not None:  # rotate by absolute position: cached keys keep theirs
            start = (cache.lengths if ragged else cache.pos) if cache is not None else 0
            q, k = self.rotary(q, start), self.rotary(k, start)
        dropout_p = self.dropout if self.training else 0.0
        if ragged:  # one new token per row, each seeing its own row's tokens only
            k, v, mask = cache.append_rows(self.layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif cache is None or cache.pos == 0:
            if cache is not None:
                cache.append(self.layer, k, v)
            # flash attention where the backend has it; is_causal builds the triangular mask for free
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            start = cache.pos
            k, v = cache.append(self.layer, k, v)
            mask = None
            if T > 1:  # several new tokens: each sees the cached prefix and the new tokens before it
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_hidden
        # SwiGLU's gate and up projections are one matmul of twice the width, split after it
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.kind == "swiglu" else hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation; keep it for parity
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = self.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        # wpe second, where GPT-2 has it: the order of the parameters is the order of AdamW's saved state
        # (and of the init's random draws), so a checkpoint saved before rope existed still resumes
        wpe = {"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.pos_embedding == "learned" else {}
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                **wpe,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=make_norm(config, config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying (GPT-2 does it): the output projection is the token embedding.
            self.lm_head.weight = self.transformer.wte.weight
        else:
            self.lm_head.zero_init = config.zero_init_proj
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            zero = getattr(module, "zero_init", False)
            if getattr(module, "residual_projection", False):
                zero = self.config.zero_init_proj  # each block starts as the identity (modded-nanogpt)
                # Each block adds two residual branches; scaling keeps the residual stream's
                # variance from growing with depth (GPT-2 paper, section 2.3).
                std *= (2 * self.config.n_layer) ** -0.5
            if zero:
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied head is counted once

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final LayerNorm's output, (B, T, n_embd): everything but the LM head."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        if cache is not None and cache.lengths is not None:  # each row at its own position (serving)
            if T != 1:
                raise ValueError("a cache with per-row lengths takes one new token per row")
            start = cache.begin_rows_step()
            positions = cache.lengths[:, None]
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than block_size={self.config.block_size}"
            )
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:  # with rope, positions enter inside attention instead
            x = x + self.transformer.wpe(positions)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache)
        if cache is not None and cache.lengths is not None:
            cache.lengths += T
        elif cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_logits: bool = True,
        amp: torch.dtype | None = None,
        last_only: bool = False,
        loss_reduction: str = "mean",
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return (logits over every position, mean cross-entropy against `targets` or None).

        `loss_reduction="none"` (evaluation, no gradients): each position's loss instead of the mean, (B, T),
        0 where the target is -1; bits per byte weighs each token's loss by the bytes it stands for.

        `last_only` (sampling, without targets): logits for the last position alone, (B, 1, vocab). A prompt's
        other positions are never read when sampling, and their head is a large share of a prefill's work
        (T x n_embd x 50,304 multiply-adds) and memory.

        `return_logits=False` (training) computes the loss chunk by chunk without ever holding the
        full (B, T, vocab) logits in memory, and returns None for them. That path turns autocast off to
        control its own precision, so it is told the autocast dtype the caller runs under: `amp`
        (None: float32), from `gptscratch.precision`.
        """
        x = self.hidden_states(idx, cache)
        cap = self.config.logit_softcap
        if targets is not None and not return_logits:
            loss = fused_linear_cross_entropy(x, self.lm_head.weight, targets, amp, softcap=cap,
                                              reduction=loss_reduction)
            return None, loss.view(targets.shape) if loss_reduction == "none" else loss
        if last_only:
            if targets is not None:
                raise ValueError("last_only gives no loss: the targets need every position's logits")
            x = x[:, -1:]
        logits = self.lm_head(x)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-1,
                                   reduction=loss_reduction)
            loss = loss.view(targets.shape) if loss_reduction == "none" else loss
        return logits, loss

    def new_cache(
        self, batch_size: int, device=None, dtype: torch.dtype | None = None, per_row: bool = False
    ) -> KVCache:
        ref = self.lm_head.weight
        return KVCache(self.config, batch_size, device or ref.device, dtype or ref.dtype, per_row)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `x @ weight.T` computed a chunk of rows at a time.

    The full float32 logits of a GPT-2 batch are large (8 x 1024 x 50304 x 4 bytes = 1.6 GB); here only
    one chunk lives at a time. The gradient of each chunk is computed in the forward pass, right after
    its logits, so backward does no extra matmul: it only scales the stored gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, softcap: float):
        n = x.size(0)
        valid = targets != -1
        count = valid.sum().clamp(min=1)
        grad_x = torch.empty_like(x)
        grad_w = None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for i in range(0, n, chunk):
            xs, ts = x[i : i + chunk], targets[i : i + chunk]
            logits = (xs @ weight.t()).float()
            if softcap:  # logits = cap * tanh(z / cap); keep tanh for the chain rule below
                squash = logits.div_(softcap).tanh_()
                logits = squash * softcap
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = ts.clamp(min=0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
            mask = valid[i : i + chunk]
            total += ((lse - target_logit) * mask).sum()
            # d(loss)/d(logits) = softmax - onehot, for valid rows only (the 1/count comes later);
            # computed in place, since the chunk's logits are not needed any more. An ignored row
            # subtracts +inf, so its softmax is exactly 0 and its onehot is scaled by 0: no branch on
            # the data, which would cost a device sync and break torch.compile's graph.
            grad = logits.sub_(torch.where(mask, lse, torch.inf)[:, None]).exp_()
            grad[torch.arange(grad.size(0), device=grad.device), safe_t] -= mask.to(grad.dtype)
            if softcap:
                grad.mul_(1 - squash.square_())  # d(cap * tanh(z / cap))/dz = 1 - tanh^2
            grad = grad.to(x.dtype)
            grad_x[i : i + chunk] = grad @ weight
            part = grad.t() @ xs
            if grad_w is None:  # the usual case on a CPU: one chunk, nothing to accumulate
                grad_w = part
            else:  # sum the chunks in float32; a bf16 part adds in without a float copy of its own
                grad_w = grad_w if grad_w.dtype == torch.float32 else grad_w.float()
                grad_w += part
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype), count)
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return grad_x * scale.to(grad_x.dtype), grad_w * scale.to(grad_w.dtype), None, None, None


def fused_linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, amp: torch.dtype | None = None,
    chunk_tokens: int = 2048, softcap: float = 0.0, reduction: str = "mean",
) -> torch.Tensor:
    """Mean cross-entropy of the logits `x @ weight.T` against `targets` (-1 = ignore); with
    `reduction="none"` (no gradients) each row's loss, 0 for an ignored one.

    The matmuls run in `amp` (the caller's autocast dtype, None for float32), as autocast would run them;
    the softmax and the loss in float32; `softcap` > 0 squashes the logits to cap * tanh(z / cap) first.
    Rows are taken `chunk_tokens` at a time (2048 x 50304 float32 logits = 412 MB). Fewer, larger chunks
    are faster on CPUs: in bf16, one chunk of 2048 rows trained the `small` shape about 10% faster than two
    of 1024 (benchmarks/RESULTS.md); in float32 it made no measurable difference.
    """
    x2 = x.reshape(-1, x.size(-1))
    if amp is not None:
        x2, weight = x2.to(amp), weight.to(amp)
    elif x2.dtype != weight.dtype:
        x2 = x2.to(weight.dtype)
    # At most 8 chunks: torch.compile unrolls the loop, and its compile time grows with every chunk.
    chunk = max(chunk_tokens, -(-x2.size(0) // 8))
    targets = targets.reshape(-1)
    with torch.autocast(device_type=x.device.type, enabled=False):
        if torch.is_grad_enabled() and (x2.requires_grad or weight.requires_grad):
            if reduction != "mean":
                raise ValueError("the chunked loss gives per-token losses without gradients only")
            return _FusedLinearCrossEntropy.apply(x2, weight, targets, chunk, softcap)
        # evaluation: the same loss, without computing gradients nobody will use
        losses = []
        for i in range(0, x2.size(0), chunk):
            logits = (x2[i : i + chunk] @ weight.t()).float()
            if softcap:
                logits = softcap * torch.tanh(logits / softcap)
            losses.append(F.cross_entropy(logits, targets[i : i + chunk], ignore_index=-1, reduction="none"))
        per_row = torch.cat(losses)
        if reduction == "none":
            return per_row
        return per_row.sum() / (targets != -1).sum().clamp(min=1)


__all__ = ["GPT", "GPTConfig", "KVCache", "fused_linear_cross_entropy"]
