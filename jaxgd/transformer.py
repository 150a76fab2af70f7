"""A vision transformer's layers, each with its hand backward beside its forward (``jaxgd.layers``' contract).

Tokens are per example ``(tokens, features)``; a batch is ``(batch, tokens, features)``. The pieces of a ViT
(Dosovitskiy et al., "An Image is Worth 16x16 Words", 2021) with the pre-norm block of GPT-2 and ViT:

    patch_embed(p, d)            image (h, w, c) -> (h/p * w/p, d): each p x p patch flattened, times W, plus b
    class_token()                prepends a learned token:        (n, d) -> (n + 1, d)
    position_embedding()         adds a learned (n, d) table
    transformer_block(d, heads)  x + MHSA(LN(x)), then x + MLP(LN(x)), MLP = dense(m) -> GELU -> dense(d)
    take_token(0) / token_mean() (n, d) -> (d,): the class token, or the mean over tokens
    token_dense(f)               y = x W + b on every token

``multi_head_attention(heads)`` projects ``x`` to queries, keys and values with one ``(d, 3d)`` matrix, splits
each into ``heads`` of ``d / heads`` features, runs ``jaxgd.attention`` on every head (the plain backward, or
FlashAttention-2's with ``impl="flash"``), merges the heads back (head ``h`` is features
``h*dh .. (h+1)*dh``) and projects with ``W_o``, PyTorch's ``nn.MultiheadAttention`` layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgd import attention as att
from jaxgd import draws
from jaxgd.composite import residual
from jaxgd.layers import GELU, Dense, Layer, LayerNorm, init_linear

ATTENTION_IMPLS = ("plain", "flash")


def _tokens(name, in_shape):
    if len(in_shape) != 2:
        raise ValueError(f"{name} needs (tokens, features) inputs; gets per-example shape {tuple(in_shape)}")


def _sum_lead(x):
    """Sum over every axis but the last: a per-token parameter's gradient summed over batch and tokens."""
    return jnp.sum(x.reshape(-1, x.shape[-1]), axis=0)


@dataclasses.dataclass(frozen=True)
class TokenDense(Dense):
    """``y = x W + b`` on every token, ``(n, d) -> (n, features)``: ``Dense``'s forward and backward (``dW`` sums
    ``x^T dy`` over the batch and the tokens)."""

    def out_shape(self, in_shape):
        _tokens(f"token_dense({self.features})", in_shape)
        return (in_shape[0], self.features)

    def __str__(self):
        return "token_" + super().__str__()


@dataclasses.dataclass(frozen=True)
class MultiHeadAttention(Layer):
    """Multi-head self-attention, ``(n, d) -> (n, d)``:

        [q | k | v] = x W_qkv + b_qkv,   each split into ``heads`` heads of dh = d / heads features
        o_h = softmax(q_h k_h^T / sqrt(dh)) v_h     (``jaxgd.attention``; causal: token i sees 0 .. i)
        y = [o_1 | ... | o_H] W_o + b_o

    Backward: ``dW_o = o^T dy``, ``db_o = sum dy``, ``do = dy W_o^T`` split into heads; each head's attention
    backward (``attention_backward``, or ``flash_backward`` with ``impl="flash"``) gives ``dq, dk, dv``, merged
    into ``d[q|k|v]``; then ``dW_qkv = x^T d[q|k|v]``, ``db_qkv = sum d[q|k|v]``, ``dx = d[q|k|v] W_qkv^T``.
    Residuals: ``x``, the attention's residuals (with ``P`` for the plain one; ``O`` and each row's
    log-sum-exp for flash) and the merged heads ``o``. Initialised as PyTorch's ``nn.MultiheadAttention``:
    ``W_qkv`` Glorot-uniform, ``W_o`` as ``nn.Linear``, biases 0."""

    heads: int
    causal: bool = False
    impl: str = "plain"
    block_q: int = att.BLOCK_Q  # flash's blocks (``impl="flash"`` only)
    block_k: int = att.BLOCK_K

    def __post_init__(self):
        if not isinstance(self.heads, int) or self.heads < 1:
            raise ValueError(f"multi_head_attention needs heads >= 1, got {self.heads!r}")
        if self.impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention impl {self.impl!r}; choose from {ATTENTION_IMPLS}")
        if min(self.block_q, self.block_k) < 1:
            raise ValueError(f"multi_head_attention's blocks must be >= 1, got {self.block_q}, {self.block_k}")

    def out_shape(self, in_shape):
        _tokens(f"multi_head_attention({self.heads})", in_shape)
        if in_shape[1] % self.heads:
            raise ValueError(
                f"multi_head_attention({self.heads}) needs features divisible by the heads; gets {in_shape[1]}"
            )
        return tuple(in_shape)

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        d = in_shape[1]
        kq, ko = jax.random.split(key)
        W_qkv = init_linear(kq, d, 3 * d, "glorot", dtype)["W"]
        W_o = init_linear(ko, d, d, "torch", dtype)["W"]
        zeros = lambda n: jnp.zeros((n,), dtype)
        return {"W_qkv": W_qkv, "b_qkv": zeros(3 * d), "W_o": W_o, "b_o": zeros(d)}, {}, shape

    def _split(self, t):
        """``(b, n, d) -> (b, heads, n, d / heads)``."""
        b, n, d = t.shape
        return t.reshape(b, n, self.heads, d // self.heads).transpose(0, 2, 1, 3)

    @staticmethod
    def _merge(t):
        """``(b, heads, n, dh) -> (b, n, heads * dh)``: head ``h`` becomes features ``h*dh .. (h+1)*dh``."""
        b, h, n, dh = t.shape
        return t.transpose(0, 2, 1, 3).reshape(b, n, h * dh)

    def forward(self, params, state, x, *, train=False, key=None):
        qkv = x @ params["W_qkv"] + params["b_qkv"]
        q, k, v = (self._split(t) for t in jnp.split(qkv, 3, axis=-1))
        if self.impl == "flash":
            o, res = att.flash_forward(q, k, v, self.causal, None, self.block_q, self.block_k)
        else:
            o, res = att.attention_forward(q, k, v, self.causal)
        o = self._merge(o)
        return o @ params["W_o"] + params["b_o"], state, (x, res, o)

    def backward(self, params, residuals, dy):
        if self.impl == "flash":
            bwd = lambda res, do: att.flash_backward(res, do, self.causal, None, self.block_q, self.block_k)
        else:
            bwd = lambda res, do: att.attention_backward(res, do, self.causal)
        return self.backward_with(params, residuals, dy, bwd)

    def backward_with(self, params, residuals, dy, attention_backward, split=None, merge=None):
        """``backward`` with its attention backward ``(residuals, dO) -> (dq, dk, dv)`` given (and, where given,
        the ways heads are split and merged): the checker's attention diagnoses recompute a mistake with it."""
        split, merge = split or self._split, merge or self._merge
        x, res, o = residuals
        d = x.shape[-1]
        dq, dk, dv = attention_backward(res, split(dy @ params["W_o"].T))
        dqkv = jnp.concatenate([merge(t) for t in (dq, dk, dv)], axis=-1)
        grads = {
            "W_qkv": x.reshape(-1, d).T @ dqkv.reshape(-1, 3 * d),
            "b_qkv": _sum_lead(dqkv),
            "W_o": o.reshape(-1, d).T @ dy.reshape(-1, d),
            "b_o": _sum_lead(dy),
        }
        return grads, dqkv @ params["W_qkv"].T

    def macs(self, in_shape):
        n, d = in_shape
        return int(4 * n * d * d + 2 * n * n * d)  # projections (3d + d per token), q k^T and p v

    def __str__(self):
        extra = (", causal=True" if self.causal else "") + (f", impl={self.impl!r}" if self.impl != "plain" else "")
        if (self.block_q, self.block_k) != (att.BLOCK_Q, att.BLOCK_K):
            extra += f", block_q={self.block_q}, block_k={self.block_k}"
        return f"multi_head_attention({self.heads}{extra})"


@dataclasses.dataclass(frozen=True)
class PatchEmbed(Layer):
    """An image ``(h, w, c)`` cut into ``patch x patch`` squares, each flattened (row by row, channels last) and
    projected: ``(h/p * w/p, features)``, tokens in row-major order of the patches; a convolution with kernel
    size and stride ``p``. Backward: ``dW = patches^T dy``, ``db = sum dy``, ``dx = dy W^T`` put back in place.
    Residual: the patches."""

    patch: int
    features: int

    def out_shape(self, in_shape):
        p = self.patch
        if len(in_shape) != 3 or in_shape[0] % p or in_shape[1] % p:
            raise ValueError(
                f"patch_embed({p}, {self.features}) needs (height, width, channels) images with height and width "
                f"divisible by {p}; gets per-example shape {tuple(in_shape)}"
            )
        return ((in_shape[0] // p) * (in_shape[1] // p), self.features)

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        return init_linear(key, self.patch**2 * in_shape[2], self.features, "torch", dtype), {}, shape

    def _patches(self, x):
        b, h, w, c = x.shape
        p = self.patch
        t = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return t.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, params, state, x, *, train=False, key=None):
        patches = self._patches(x)
        return patches @ params["W"] + params["b"], state, (patches, jnp.zeros((0,) + x.shape[1:3], x.dtype))

    def backward(self, params, res, dy):
        patches, hw = res
        (h, w), p = hw.shape[1:], self.patch
        k = patches.shape[-1]
        grads = {"W": patches.reshape(-1, k).T @ dy.reshape(-1, self.features), "b": _sum_lead(dy)}
        dp = (dy @ params["W"].T).reshape(dy.shape[0], h // p, w // p, p, p, k // (p * p))
        return grads, dp.transpose(0, 1, 3, 2, 4, 5).reshape(dy.shape[0], h, w, k // (p * p))

    def macs(self, in_shape):
        n, f = self.out_shape(in_shape)
        return int(n * f * self.patch**2 * in_shape[2])

    def __str__(self):
        return f"patch_embed({self.patch}, {self.features})"


@dataclasses.dataclass(frozen=True)
class PositionEmbedding(Layer):
    """``y = x + E``, a learned ``(tokens, features)`` table (drawn from N(0, 0.02^2), as ViT's). Backward:
    ``dE = sum_batch dy``, ``dx = dy``. Residual: none."""

    std: float = 0.02

    def init(self, key, in_shape, dtype=jnp.float32):
        _tokens("position_embedding", in_shape)
        return {"E": draws.normal(key, tuple(in_shape), dtype) * jnp.asarray(self.std, dtype)}, {}, tuple(in_shape)

    def forward(self, params, state, x, *, train=False, key=None):
        return x + params["E"], state, None

    def backward(self, params, res, dy):
        return {"E": jnp.sum(dy, axis=0)}, dy

    def __str__(self):
        return "position_embedding"


@dataclasses.dataclass(frozen=True)
class ClassToken(Layer):
    """Prepends a learned token ``c`` (``(features,)``, N(0, 0.02^2)): ``(n, d) -> (n + 1, d)``, ``y[0] = c``.
    Backward: ``dc = sum_batch dy[:, 0]``, ``dx = dy[:, 1:]``. Residual: none."""

    std: float = 0.02

    def out_shape(self, in_shape):
        _tokens("class_token", in_shape)
        return (in_shape[0] + 1, in_shape[1])

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        return {"c": draws.normal(key, (in_shape[1],), dtype) * jnp.asarray(self.std, dtype)}, {}, shape

    def forward(self, params, state, x, *, train=False, key=None):
        c = jnp.broadcast_to(params["c"], (x.shape[0], 1, x.shape[2]))
        return jnp.concatenate([c, x], axis=1), state, None

    def backward(self, params, res, dy):
        return {"c": jnp.sum(dy[:, 0], axis=0)}, dy[:, 1:]

    def __str__(self):
        return "class_token"


@dataclasses.dataclass(frozen=True)
class TakeToken(Layer):
    """``(n, d) -> (d,)``: token ``index`` (0: the class token). Backward: ``dy`` at that token, 0 elsewhere.
    Residual: an empty ``(0, n)`` array that carries the token count."""

    index: int = 0

    def out_shape(self, in_shape):
        _tokens("take_token", in_shape)
        if not -in_shape[0] <= self.index < in_shape[0]:
            raise ValueError(f"take_token({self.index}) out of range for {in_shape[0]} tokens")
        return (in_shape[1],)

    def forward(self, params, state, x, *, train=False, key=None):
        return x[:, self.index], state, jnp.zeros((0, x.shape[1]), x.dtype)

    def backward(self, params, n, dy):
        dx = jnp.zeros((dy.shape[0], n.shape[1], dy.shape[1]), dy.dtype)
        return {}, dx.at[:, self.index].set(dy)

    def __str__(self):
        return f"take_token({self.index})"


@dataclasses.dataclass(frozen=True)
class TokenMean(Layer):
    """``(n, d) -> (d,)``: the mean over tokens. Backward: ``dx = dy / n`` at every token. Residual: an empty
    ``(0, n)`` array that carries the token count."""

    def out_shape(self, in_shape):
        _tokens("token_mean", in_shape)
        return (in_shape[1],)

    def forward(self, params, state, x, *, train=False, key=None):
        return x.mean(axis=1), state, jnp.zeros((0, x.shape[1]), x.dtype)

    def backward(self, params, n, dy):
        t = n.shape[1]
        return {}, jnp.broadcast_to((dy / t)[:, None, :], (dy.shape[0], t, dy.shape[1]))

    def __str__(self):
        return "token_mean"


def token_dense(features: int, init: str = "torch", *, bias: bool = True) -> TokenDense:
    """``y = x W + b`` on every token of ``(tokens, features)`` inputs; ``Dense``'s backward."""
    return TokenDense(features, init, bias)


def multi_head_attention(
    heads: int, *, causal: bool = False, impl: str = "plain", block_q: int = att.BLOCK_Q, block_k: int = att.BLOCK_K
) -> MultiHeadAttention:
    """Multi-head self-attention over ``(tokens, features)`` (features divisible by ``heads``), its backward by hand
    through ``jaxgd.attention``'s (``impl="flash"``: FlashAttention-2's with these blocks, memory linear in the
    tokens)."""
    return MultiHeadAttention(heads, causal, impl, block_q, block_k)


def patch_embed(patch: int, features: int) -> PatchEmbed:
    """Images ``(h, w, c)`` to ``(h/patch * w/patch, features)`` tokens: each patch flattened and projected."""
    return PatchEmbed(patch, features)


def position_embedding(std: float = 0.02) -> PositionEmbedding:
    """A learned table added to the tokens (ViT's initialisation, N(0, 0.02^2))."""
    return PositionEmbedding(std)


def class_token(std: float = 0.02) -> ClassToken:
    """A learned token prepended to the sequence (ViT's ``[class]``)."""
    return ClassToken(std)


def take_token(index: int = 0) -> TakeToken:
    """One token's features (0: the class token's) as the example's output."""
    return TakeToken(index)


def token_mean() -> TokenMean:
    """The mean over tokens as the example's output (global average pooling of tokens)."""
    return TokenMean()


def transformer_block(
    dim: int, heads: int, mlp_dim: int | None = None, *, causal: bool = False, impl: str = "plain"
) -> tuple:
    """A pre-norm transformer block over ``(tokens, dim)`` as two residual layers (``layers.residual``):

        x <- x + MHSA(LN(x))
        x <- x + dense(dim) ( GELU( dense(mlp_dim) (LN(x)) ) )      mlp_dim = 4 dim unless given

    Its backward is the layers' own, walked by the residual machinery (each branch's ``dx`` summed)."""
    mlp_dim = 4 * dim if mlp_dim is None else mlp_dim
    return (
        residual([LayerNorm(), MultiHeadAttention(heads, causal, impl)]),
        residual([LayerNorm(), TokenDense(mlp_dim), GELU(), TokenDense(dim)]),
    )
