"""A gallery of classic backprop mistakes, each a layer whose backward is wrong in one known way.

For teaching and for testing ``jaxgd.check``: every entry of ``GALLERY`` names the mistake, the
layer, the input it is checked on, and a phrase the check's diagnosis must contain. Each layer
subclasses the right one and overrides only what the mistake changes, so the diff between a
mistake and ``jaxgd.layers`` is the bug itself.

    for m in GALLERY:
        print(m.name, "->", jaxgd.check(m.layer, m.in_shape, x=m.x()).causes())

``FUNCTION_GALLERY`` does the same for ``jax.custom_vjp`` / ``custom_jvp`` rules (a factor, a sign,
a dropped or transposed cotangent, a broadcast argument's cotangent not summed, a slope or a mean
term forgotten, a nondiff argument's factor), checked as ``jaxgd.check(m.f, *m.args(rng))``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import attention as att
from jaxgd import draws
from jaxgd import layers as L


class DenseTransposed(L.Dense):
    """``dW = dy^T x``: the product taken the wrong way round."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "W": dy.T @ x}, dx


class DenseMean(L.Dense):
    """``dW = x^T dy / n``, ``db = mean dy``: averaged over the batch although the loss sums it."""

    def backward(self, params, x, dy):
        n = x.shape[0]
        return {"W": x.T @ dy / n, "b": jnp.mean(dy, 0)}, dy @ params["W"].T


class DenseBiasNotSummed(L.Dense):
    """``db = dy``: the bias gradient keeps one row per example."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "b": dy}, dx


class DenseOneEntryOff(L.Dense):
    """``dW`` right but for one entry, off by a ten-thousandth of the largest: a typo in an index."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "W": g["W"].at[1, 2].add(1e-4 * jnp.max(jnp.abs(g["W"])))}, dx


class DenseInputGradUntransposed(L.Dense):
    """``dx = dy W`` where ``dy W^T`` is meant: shapes agree only for a square ``W``, so nothing
    fails but the values."""

    def backward(self, params, x, dy):
        g, _ = super().backward(params, x, dy)
        return g, dy @ params["W"]


class DenseBiasWrongAxis(L.Dense):
    """``db = sum(dy, axis=1)``: summed over the features instead of the batch."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "b": jnp.sum(dy, axis=1)}, dx


class GELUTermForgotten(L.GELU):
    """Exact GELU with ``f'(x) = Phi(x)``: the product rule's second term ``x phi(x)`` forgotten."""

    def backward(self, params, x, dy):
        return {}, dy * 0.5 * (1 + jax.lax.erf(x / jnp.sqrt(2.0).astype(x.dtype)))


class DenseBiasForgotten(L.Dense):
    """``db = 0``: the bias gradient was never written."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "b": jnp.zeros_like(params["b"])}, dx


class TanhSignFlipped(L.Activation):
    """``dx = -dy (1 - y^2)``: the sign of the derivative lost."""

    def backward(self, params, y, dy):
        return {}, -dy * (1 - y * y)


@dataclasses.dataclass(frozen=True)
class Square(L.Layer):
    """``y = x^2`` with ``dx = dy * x``: the 2 of ``d/dx x^2 = 2x`` forgotten."""

    def forward(self, params, state, x, *, train=False, key=None):
        return x * x, state, x

    def backward(self, params, x, dy):
        return {}, dy * x


class SoftmaxWrongAxis(L.Softmax):
    """``dx = y (dy - sum(dy y, axis=0))``: the Jacobian's sum taken over the batch."""

    def backward(self, params, y, dy):
        return {}, y * (dy - jnp.sum(dy * y, axis=0, keepdims=True))


class SoftmaxCouplingForgotten(L.Softmax):
    """``dx = y dy``: the diagonal of softmax's Jacobian only, its coupling ``- y sum(dy y)`` forgotten."""

    def backward(self, params, y, dy):
        return {}, y * dy


class LayerNormMissingMean(L.LayerNorm):
    """``dx`` without its ``- sum g`` term: the mean's dependence on x forgotten."""

    def backward(self, params, res, dy):
        g, _ = super().backward(params, res, dy)
        x_hat, inv = res
        gs = dy * params["scale"]
        d = dy.shape[-1]
        return g, (inv / d) * (d * gs - x_hat * jnp.sum(gs * x_hat, -1, keepdims=True))


class BatchNormConstantStatistics(L.BatchNorm):
    """In training, ``dx = dy * scale / sqrt(var + eps)``: the batch mean and variance treated as
    constants (right in eval mode only)."""

    def backward(self, params, res, dy):
        g, _ = super().backward(params, res, dy)
        return g, dy * (params["scale"] * res[1])


class BatchNormUpdatesInEval(L.BatchNorm):
    """The running statistics move in eval mode too."""

    def forward(self, params, state, x, *, train=False, key=None):
        y, new_state, res = super().forward(params, state, x, train=True, key=key)
        if train:
            return y, new_state, res
        y_eval, _, res_eval = super().forward(params, state, x, train=False, key=key)
        return y_eval, new_state, res_eval


class ConvValidInputGrad(L.Conv2D):
    """``dx`` by a "valid" convolution of ``dy``, zero-padded back to the input's size: right
    inside, wrong on the border, where the forward's padding took part."""

    def backward(self, params, x, dy):
        g, _ = super().backward(params, x, dy)
        W = params["W"]
        p = W.shape[0] // 2
        dx = jax.lax.conv_general_dilated(
            dy, jnp.flip(W, (0, 1)).transpose(0, 1, 3, 2), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return g, jnp.pad(dx, ((0, 0), (p, p), (p, p), (0, 0)))


class ConvInputGradUnflipped(L.Conv2D):
    """``dx`` by correlating ``dy`` with the kernel as it is: the forward is a correlation, so its
    input gradient is a convolution, i.e. a correlation with the kernel flipped in space."""

    def backward(self, params, x, dy):
        g, _ = super().backward(params, x, dy)
        dx = jax.lax.conv_general_dilated(
            dy, params["W"].transpose(0, 1, 3, 2), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return g, dx


class MaxPoolSpread(L.MaxPool):
    """Max pooling whose backward spreads ``dy / size^2`` over each window, as average pooling's
    does, instead of routing it to the window's maximum."""

    def backward(self, params, res, dy):
        return L.AvgPool(self.size).backward(params, None, dy)


@dataclasses.dataclass(frozen=True)
class ReLUAtZero(L.Layer):
    """ReLU with ``dx = dy * (x >= 0)``: slope 1 at the kink, where ``jax.nn.relu`` (and PyTorch)
    take 0. Only inputs exactly at 0 show it."""

    def forward(self, params, state, x, *, train=False, key=None):
        return jax.nn.relu(x), state, x

    def backward(self, params, x, dy):
        return {}, dy * (x >= 0).astype(dy.dtype)


class LeakyReLUSlopeForgotten(L.LeakyReLU):
    """A plain ReLU's backward: the negative branch's slope forgotten."""

    def backward(self, params, y, dy):
        return {}, jnp.where(y > 0, dy, 0.0)


class LeakyReLUWithNumPy(L.LeakyReLU):
    """The backward written with NumPy: right eagerly, but it cannot be traced (jit, vmap, scan)."""

    def backward(self, params, y, dy):
        return {}, jnp.asarray(np.where(np.asarray(y) > 0, np.asarray(dy), self.slope * np.asarray(dy)))


class DropoutFloat32(L.Dropout):
    """``dx`` cast to a hard-coded float32: right numbers, the wrong dtype in float64."""

    def backward(self, params, keep, dy):
        return {}, super().backward(params, keep, dy)[1].astype(jnp.float32)


# ------------------------------------------------------------------------------ attention's classic mistakes


def _attention_backward_with(res, do, causal, *, scale=True, coupling=True, swapped=False):
    """``attention_backward`` as a student might write it, with a switch per classic slip."""
    q, k, v, p = res
    sc = 1 / jnp.sqrt(q.shape[-1]).astype(q.dtype) if scale else 1.0
    dv = jnp.swapaxes(p, -1, -2) @ do
    dp = do @ jnp.swapaxes(v, -1, -2)
    ds = p * (dp - jnp.sum(dp * p, -1, keepdims=True)) if coupling else p * dp
    if swapped:
        return sc * ds @ q, sc * jnp.swapaxes(ds, -1, -2) @ k, dv
    return sc * ds @ k, sc * jnp.swapaxes(ds, -1, -2) @ q, dv


def _flash_backward_with(res, do, causal, bk, *, mask=True, d_from_block=False):
    """FlashAttention-2's backward over key blocks of ``bk`` keys written out, with the causal mask left out of
    the recomputed ``P`` (``mask=False``) or ``D`` summed over the block (``d_from_block``)."""
    q, k, v, o, lse = res
    scale = 1 / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    n, m = q.shape[-2], k.shape[-2]
    dq, dks, dvs = jnp.zeros_like(q), [], []
    for j0 in range(0, m, bk):
        kj, vj = k[..., j0 : j0 + bk, :], v[..., j0 : j0 + bk, :]
        s = q @ jnp.swapaxes(kj, -1, -2) * scale
        p = jnp.exp(s - lse[..., None])
        if causal and mask:
            p = jnp.where(att.causal_mask(n, kj.shape[-2], 0, j0), p, 0.0)
        dp = do @ jnp.swapaxes(vj, -1, -2)
        d = jnp.sum(dp * p, -1, keepdims=True) if d_from_block else jnp.sum(do * o, -1, keepdims=True)
        ds = p * (dp - d)
        dq = dq + scale * ds @ kj
        dks.append(scale * jnp.swapaxes(ds, -1, -2) @ q)
        dvs.append(jnp.swapaxes(p, -1, -2) @ do)
    return dq, jnp.concatenate(dks, -2), jnp.concatenate(dvs, -2)


class AttentionScaleForgotten(L.MultiHeadAttention):
    """The 1/sqrt(d) of the forward's scores left out of the backward's dq and dk."""

    def backward(self, params, res, dy):
        return self.backward_with(
            params, res, dy, lambda r, do: _attention_backward_with(r, do, self.causal, scale=False)
        )


class AttentionCouplingDropped(L.MultiHeadAttention):
    """``dS = P * dP``: softmax's ``- P rowsum(dP * P)`` term dropped."""

    def backward(self, params, res, dy):
        return self.backward_with(
            params, res, dy, lambda r, do: _attention_backward_with(r, do, self.causal, coupling=False)
        )


class AttentionQKSwapped(L.MultiHeadAttention):
    """``dq = dS q``, ``dk = dS^T k``: each computed with the other's operand."""

    def backward(self, params, res, dy):
        return self.backward_with(
            params, res, dy, lambda r, do: _attention_backward_with(r, do, self.causal, swapped=True)
        )


class AttentionHeadsMisordered(L.MultiHeadAttention):
    """The backward splits ``dO`` into heads (and merges ``dq, dk, dv`` back) as ``(tokens, dh, heads)``."""

    def backward(self, params, res, dy):
        h = self.heads
        split = lambda t: t.reshape(t.shape[0], t.shape[1], -1, h).transpose(0, 3, 1, 2)
        merge = lambda t: t.transpose(0, 2, 3, 1).reshape(t.shape[0], t.shape[2], -1)
        bwd = lambda r, do: att.attention_backward(r, do, self.causal)
        return self.backward_with(params, res, dy, bwd, split, merge)


class FlashMaskForgotten(L.MultiHeadAttention):
    """FlashAttention's backward recomputes ``P = exp(S - L)`` without the causal mask the forward applied."""

    def backward(self, params, res, dy):
        return self.backward_with(
            params, res, dy, lambda r, do: _flash_backward_with(r, do, self.causal, self.block_k, mask=False)
        )


class FlashDFromBlock(L.MultiHeadAttention):
    """FlashAttention's ``D`` as ``rowsum(dP_ij * P_ij)`` of the key block, where the whole row's
    ``rowsum(dO * O)`` is meant."""

    def backward(self, params, res, dy):
        return self.backward_with(
            params, res, dy, lambda r, do: _flash_backward_with(r, do, self.causal, self.block_k, d_from_block=True)
        )


@dataclasses.dataclass(frozen=True)
class Mistake:
    """One gallery entry: the layer, its input, a phrase its diagnosis must contain, the finding
    that must hold it (its ``where`` begins with ``where``: a gradient and mode, a check or the
    summary) and its kind: ``"cause"`` (a verified hypothesis), ``"observation"`` (where the wrong
    entries are, no cause named), ``"check"`` or ``"summary"``."""

    name: str
    layer: L.Layer
    in_shape: tuple
    expect: str
    zeros: bool = False  # check on an input with exact zeros (the kinks), not a random one
    where: str = ""
    kind: str = "cause"

    def x(self, batch=3, seed=0):
        if not self.zeros:
            return None
        x = np.array(draws.normal(jax.random.PRNGKey(seed), (batch,) + self.in_shape))
        x.reshape(-1)[::4] = 0.0  # every fourth input exactly at the kink
        return x


GALLERY = (
    Mistake("transposed weight gradient", DenseTransposed(5), (7,), "transposed", where="param W (train"),
    Mistake("transposed square weight gradient", DenseTransposed(5), (5,), "transposed", where="param W (train"),
    Mistake(
        "mean over the batch where the loss sums", DenseMean(5), (7,), "1 / the batch size", where="param W (train"
    ),
    Mistake(
        "bias gradient not summed over the batch",
        DenseBiasNotSummed(5),
        (7,),
        "not summed over the batch",
        where="param b (train",
    ),
    Mistake(
        "bias gradient summed over the wrong axis",
        DenseBiasWrongAxis(5),
        (7,),
        "reduced over the wrong axis",
        where="param b (train",
    ),
    Mistake(
        "one weight entry slightly off",
        DenseOneEntryOff(5),
        (5,),
        "only 1 of 25 coordinates wrong: (1, 2)",
        where="param W (train",
        kind="observation",
    ),
    Mistake("bias gradient forgotten", DenseBiasForgotten(5), (7,), "zero everywhere", where="param b (train"),
    Mistake(
        "GELU's x phi(x) forgotten",
        GELUTermForgotten(),
        (6,),
        "dy * x phi(x) (GELU's second term): that term of the derivative forgotten",
        where="x (train",
    ),
    Mistake(
        "input gradient through W, not W^T", DenseInputGradUntransposed(5), (5,), "with W transposed", where="x (train"
    ),
    Mistake("sign flipped", TanhSignFlipped("tanh"), (6,), "sign is flipped", where="x (train"),
    Mistake("factor 2 forgotten", Square(), (6,), "factor 2 is missing", where="x (train"),
    Mistake(
        "softmax's sum over the batch axis",
        SoftmaxWrongAxis(),
        (6,),
        "mixes examples",
        where="x (train",
        kind="observation",
    ),
    Mistake(
        "softmax's coupling term forgotten",
        SoftmaxCouplingForgotten(),
        (6,),
        "softmax's coupling term forgotten",
        where="x (train",
    ),
    Mistake(
        "layer norm without the mean's term",
        LayerNormMissingMean(),
        (6,),
        "same at every index of axis 1",
        where="x (train",
    ),
    Mistake(
        "batch norm's statistics taken as constants",
        BatchNormConstantStatistics(),
        (4,),
        "right in eval mode, wrong in training mode",
        where="summary",
        kind="summary",
    ),
    Mistake(
        "batch norm's mean and variance terms forgotten",
        BatchNormConstantStatistics(),
        (5,),
        "the batch statistics treated as constants",
        where="x (train",
    ),
    Mistake(
        "batch norm updating its statistics in eval",
        BatchNormUpdatesInEval(),
        (4,),
        "state updated in eval mode",
        where="state unchanged in eval (eval",
        kind="check",
    ),
    Mistake(
        "conv input gradient without the padding",
        ConvValidInputGrad(4, 3),
        (7, 6, 2),
        "border",
        where="x (train",
        kind="observation",
    ),
    Mistake(
        "max pooling's gradient spread over the window",
        MaxPoolSpread(2),
        (4, 4, 2),
        "spread evenly over each window, where max pooling routes it",
        where="x (train",
    ),
    Mistake(
        "conv input gradient with the kernel unflipped",
        ConvInputGradUnflipped(4, 3),
        (7, 6, 2),
        "the kernel W flipped in space",
        where="x (train",
    ),
    Mistake("ReLU's slope at 0", ReLUAtZero(), (8,), "exactly 0", zeros=True, where="x (train", kind="observation"),
    Mistake(
        "leaky ReLU's slope forgotten",
        LeakyReLUSlopeForgotten(0.1),
        (6,),
        "where the input is negative",
        where="x (train",
        kind="observation",
    ),
    Mistake("NumPy in the backward", LeakyReLUWithNumPy(0.1), (6,), "NumPy", where="jit (train", kind="check"),
    Mistake("hard-coded float32", DropoutFloat32(0.3), (6,), "dtype float32 instead of float64", where="x (train"),
    Mistake(
        "attention's scale forgotten in the backward",
        AttentionScaleForgotten(2),
        (5, 4),
        "scale forgotten in the backward",
        where="param W_qkv (train",
    ),
    Mistake(
        "attention's softmax coupling term dropped",
        AttentionCouplingDropped(2),
        (5, 4),
        "coupling term dropped",
        where="param W_qkv (train",
    ),
    Mistake(
        "attention's dq and dk with each other's operand",
        AttentionQKSwapped(2),
        (5, 4),
        "each other's operand",
        where="param W_qkv (train",
    ),
    Mistake(
        "attention heads merged in the wrong order",
        AttentionHeadsMisordered(2),
        (5, 4),
        "heads split and merged in the wrong order",
        where="param W_qkv (train",
    ),
    Mistake(
        "flash's causal mask forgotten in the backward",
        FlashMaskForgotten(2, causal=True, impl="flash", block_q=2, block_k=2),
        (4, 4),
        "causal mask applied in the forward but not in the backward",
        where="param W_qkv (train",
    ),
    Mistake(
        "flash's D from the block, not the row",
        FlashDFromBlock(2, impl="flash", block_q=2, block_k=2),
        (4, 4),
        "over each key block instead of the whole row",
        where="param W_qkv (train",
    ),
)


# ------------------------------------------------------------------------------ wrong custom rules


def _vjp(primal, bwd, nondiff_argnums=()):
    """``primal`` as a ``jax.custom_vjp`` whose forward saves its arguments and whose backward is
    ``bwd(*args, g)``: the mistakes below differ from the right rule only in ``bwd``."""
    f = jax.custom_vjp(primal, nondiff_argnums=nondiff_argnums)
    f.defvjp(lambda *a: (f(*a), a), lambda *r: bwd(*r[:-2], *r[-2], r[-1]))
    f.__name__ = primal.__name__
    return f


def _lse(x):
    m = jnp.max(x, -1, keepdims=True)
    return (m + jnp.log(jnp.sum(jnp.exp(x - m), -1, keepdims=True)))[..., 0]


def _softmax(x):
    return jnp.exp(x - _lse(x)[..., None])


def _scaled(x, s):
    return x * s


def _affine(x, w):
    return x @ w


def _shift(x, b):
    return x + b


def _softplus(x):
    return jnp.logaddexp(x, 0.0)


def _power(x, p):
    return x**p


def _power_bwd(p, res, g):  # the exponent's factor p forgotten: x^(p-1) where p x^(p-1) belongs
    ((x, _),) = (res,)
    return (g * x ** (p - 1),)


def _standardize(x):
    return x - x.mean(-1, keepdims=True)


_power_vjp = jax.custom_vjp(_power, nondiff_argnums=(1,))
_power_vjp.defvjp(lambda x, p: (x**p, (x, p)), _power_bwd)


@jax.custom_jvp
def softplus_slope_forgotten(x):
    return jnp.logaddexp(x, 0.0)


@softplus_slope_forgotten.defjvp
def _softplus_slope_forgotten_jvp(primals, tangents):  # sigmoid(x) kept only where x > 0: 1 elsewhere
    (x,), (t,) = primals, tangents
    return softplus_slope_forgotten(x), jnp.where(x > 0, jax.nn.sigmoid(x), 1.0) * t


@dataclasses.dataclass(frozen=True)
class FunctionMistake:
    """One wrong ``custom_vjp`` / ``custom_jvp`` rule: the function, its example arguments (a
    function of a NumPy ``Generator``), a phrase the check's diagnosis must contain, and the
    finding that must hold it (``where``, ``kind``: as ``Mistake``'s)."""

    name: str
    f: object
    args: object
    expect: str
    where: str = ""
    kind: str = "cause"


_X = lambda r: (r.standard_normal((3, 5)),)


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


FUNCTION_GALLERY = (
    FunctionMistake(
        "log-sum-exp's rule doubled",
        _vjp(_lse, lambda x, g: (2 * g[..., None] * _softmax(x),)),
        _X,
        "off by a constant factor 2",
        where="arg 0 (vjp",
    ),
    FunctionMistake(
        "sign flipped", _vjp(jnp.sin, lambda x, g: (-g * jnp.cos(x),)), _X, "sign is flipped", where="arg 0 (vjp"
    ),
    FunctionMistake(
        "GELU's rule without x phi(x)",
        _vjp(_gelu, lambda x, g: (g * jax.scipy.stats.norm.cdf(x),)),
        _X,
        "dy * x phi(x) (GELU's second term): that term of the derivative forgotten",
        where="arg 0 (vjp",
    ),
    FunctionMistake(
        "an argument's cotangent dropped",
        _vjp(_scaled, lambda x, s, g: (g * s, jnp.zeros_like(s))),
        lambda r: (r.standard_normal((3, 5)), r.standard_normal((3, 5))),
        "zero everywhere",
        where="arg 1 (vjp",
    ),
    FunctionMistake(
        "a square weight's gradient transposed",
        _vjp(_affine, lambda x, w, g: (g @ w.T, (x.T @ g).T)),
        lambda r: (r.standard_normal((4, 5)), r.standard_normal((5, 5))),
        "transposed",
        where="arg 1 (vjp",
    ),
    FunctionMistake(
        "one cotangent returned for two arguments",
        _vjp(_scaled, lambda x, s, g: (g * s,)),
        lambda r: (r.standard_normal((3, 5)), r.standard_normal((3, 5))),
        "it must return a tuple with one cotangent per argument",
        where="custom rule runs (vjp",
        kind="check",
    ),
    FunctionMistake(
        "a mean over the batch where the function sums",
        _vjp(_shift, lambda x, b, g: (g, g.mean(0))),
        lambda r: (r.standard_normal((3, 5)), r.standard_normal(5)),
        "1 / the batch size 3",
        where="arg 1 (vjp",
    ),
    FunctionMistake(
        "a broadcast bias's cotangent not summed",
        _vjp(_shift, lambda x, b, g: (g, g)),
        lambda r: (r.standard_normal((3, 5)), r.standard_normal(5)),
        "for argument 1, whose type is",
        where="custom rule runs (vjp",
        kind="check",
    ),
    FunctionMistake(
        "softplus's slope forgotten where x < 0",
        softplus_slope_forgotten,
        _X,
        "where the input is negative",
        where="arg 0 (jvp",
        kind="observation",
    ),
    FunctionMistake(
        "centering's mean term forgotten",
        _vjp(_standardize, lambda x, g: (g,)),
        _X,
        "same at every index of axis 1",
        where="arg 0 (vjp",
    ),
    FunctionMistake(
        "a nondiff exponent's factor forgotten",
        _power_vjp,
        lambda r: (r.uniform(0.5, 2.0, (3, 5)), 4),
        "off by a constant factor: hand = 0.25 * true",
        where="arg 0 (vjp",
    ),
)


# ------------------------------------------------------------------------------ wrong rules inside bigger functions


def _sin_doubled():
    """``sin`` whose rule doubles its cotangent."""
    return _vjp(jnp.sin, lambda x, g: (2 * g * jnp.cos(x),))


_SIN2 = _sin_doubled()
_TANH_FLIPPED = _vjp(jnp.tanh, lambda x, g: (-g * (1 - jnp.tanh(x) ** 2),))


def loss_with_wrong_rule(x, w):
    """A loss whose hidden layer calls a wrong ``custom_vjp`` under ``jit``."""
    h = jax.jit(lambda v: _SIN2(v @ w))(x)
    return jnp.sum(h**2)


def scan_over_wrong_rule(x):
    """A recurrence: ``lax.scan`` of a wrong rule over the rows."""

    def body(carry, row):
        carry = _TANH_FLIPPED(carry + row)
        return carry, carry

    return jax.lax.scan(body, jnp.zeros(x.shape[1:], x.dtype), x)[1]


def vmap_of_wrong_rule(x):
    """A wrong rule mapped over the rows with ``vmap``."""
    return jax.vmap(lambda row: jnp.sum(_SIN2(row) * row))(x)


# each located (the rule that is wrong, by the name of its primal) and diagnosed
NESTED_GALLERY = (
    FunctionMistake(
        "a loss calling a wrong rule under jit",
        loss_with_wrong_rule,
        lambda r: (r.standard_normal((3, 4)), r.standard_normal((4, 4))),
        "off by a constant factor 2",
        where="sin",
    ),
    FunctionMistake(
        "a scan over a wrong rule",
        scan_over_wrong_rule,
        lambda r: (r.standard_normal((4, 3)),),
        "off by a constant factor -1",
        where="tanh",
    ),
    FunctionMistake(
        "a vmap of a wrong rule",
        vmap_of_wrong_rule,
        lambda r: (r.standard_normal((3, 5)),),
        "off by a constant factor 2",
        where="sin",
    ),
)
