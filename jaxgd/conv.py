"""The convolution's arithmetic that the ``Conv2D`` layer (``jaxgd.layers``) is built from: the
output size, the im2col matrix, the forward, and the hand-derived weight and input gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "lax", "im2col")
# "auto": im2col for inputs of at most this many channels (an image: its im2col matrix is narrow, and
# XLA:CPU's convolution of one or three channels ran slower in the MNIST CNN's epoch), lax.conv above
IM2COL_MAX_CHANNELS = 4


def forward_impl(impl: str, c_in: int) -> str:
    """The forward ``impl`` (``CONV_IMPLS``) runs for an input of ``c_in`` channels: ``"lax"`` or ``"im2col"``."""
    if impl == "auto":
        return "im2col" if c_in <= IM2COL_MAX_CHANNELS else "lax"
    return impl


PADDINGS = ("same", "valid")


def conv_out_size(n: int, k: int, stride: int = 1, pad: int | None = None) -> int:
    """Output length of a convolution over ``n`` positions: ``floor((n + 2 pad - k) / stride) + 1``
    (``pad`` defaults to ``k // 2``, "same")."""
    pad = k // 2 if pad is None else pad
    return (n + 2 * pad - k) // stride + 1


def _shifted_views(x, kh: int, kw: int, stride: int = 1, pad: int | None = None) -> list:
    """The ``kh*kw`` views of the NHWC ``x`` zero-padded by ``pad`` (default ``k // 2``, "same"),
    each shifted by one kernel tap and taken every ``stride`` pixels, in (row, column) order."""
    h, w = x.shape[1:3]
    ph, pw = (kh // 2, kw // 2) if pad is None else (pad, pad)
    ho, wo = conv_out_size(h, kh, stride, ph), conv_out_size(w, kw, stride, pw)
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    return [
        xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]


def im2col(x: jax.Array, kh: int, kw: int, stride: int = 1, pad: int | None = None) -> jax.Array:
    """The ``kh*kw`` shifted views of the NHWC ``x`` zero-padded by ``pad`` (default ``k // 2``,
    "same") on each side, taken every ``stride`` pixels, concatenated on the channel axis:
    ``(n, h_out, w_out, kh*kw*c)``, ordered (row, column, channel) as an HWIO kernel flattens."""
    return jnp.concatenate(_shifted_views(x, kh, kw, stride, pad), axis=-1)


def conv(x: jax.Array, W: jax.Array, stride: int = 1, pad: int | None = None) -> jax.Array:
    """The forward convolution of NHWC ``x`` by the HWIO kernel ``W`` (``lax.conv``): "same" (pad
    ``k // 2``) unless ``pad`` is given."""
    padding = "SAME" if pad is None else [(pad, pad), (pad, pad)]
    return jax.lax.conv_general_dilated(x, W, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


WEIGHT_GRADS = ("conv", "im2col", "taps")


def conv_weight_grad(
    x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], stride: int = 1, pad: int | None = None, by: str = "conv"
) -> jax.Array:
    """``dW = im2col(x)^T dy`` of a convolution (the same strided, padded views the forward
    multiplies), reshaped to ``w_shape`` (HWIO). ``by="conv"`` runs that sum as a convolution
    (``conv_weight_grad_as_conv``); ``by="im2col"`` builds the im2col matrix and does one matmul;
    ``by="taps"`` does one matmul per kernel tap, ``view_ij^T dy`` for the input shifted by tap
    ``(i, j)`` (the same products, never the ``kh*kw`` times larger matrix). The bench's
    ``conv_parts`` and ``cnn_epoch`` rows time the three."""
    kh, kw, c_in, c_out = w_shape
    if by not in WEIGHT_GRADS:
        raise ValueError(f"conv_weight_grad by must be one of {WEIGHT_GRADS}, got {by!r}")
    if by == "conv":
        return conv_weight_grad_as_conv(x, dy, w_shape, stride, pad)
    if by == "taps":
        d = dy.reshape(-1, c_out)
        return jnp.stack([v.reshape(-1, c_in).T @ d for v in _shifted_views(x, kh, kw, stride, pad)]).reshape(w_shape)
    cols = im2col(x, kh, kw, stride, pad)
    return (cols.reshape(-1, kh * kw * c_in).T @ dy.reshape(-1, c_out)).reshape(w_shape)


def conv_weight_grad_as_conv(
    x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], stride: int = 1, pad: int | None = None
) -> jax.Array:
    """``dW[i, j, c, o] = sum_{b, p, q} x_pad[b, s p + i, s q + j, c] dy[b, p, q, o]`` is itself a
    convolution: of the input with its channels as the batch and its batch as the channels
    (``x`` as ``(c_in, h, w, n)``), by ``dy`` as a kernel (``(h_out, w_out, n, c_out)``, HWIO)
    spread ``stride`` apart (kernel dilation), over the input padded as the forward pads it (the
    bottom/right cut to the rows the forward's windows reach). The operands are transposed first
    so that the convolution XLA runs is a plain NHWC/HWIO one: on XLA:CPU a weight-gradient
    convolution written with other dimension numbers (as ``jax.vjp`` of ``lax.conv`` writes it)
    ran about 150x slower inside a ``lax.scan`` (the bench's ``conv_parts`` rows)."""
    kh, kw, _c_in, _c_out = w_shape
    pads = []
    for n_in, n_out, k in zip(x.shape[1:3], dy.shape[1:3], (kh, kw)):
        p = k // 2 if pad is None else pad
        pads.append((p, k + stride * (n_out - 1) - n_in - p))  # the last window's far edge
    dw = jax.lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0),
        dy.transpose(1, 2, 0, 3),
        (1, 1),
        pads,
        rhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return dw.transpose(1, 2, 0, 3)


def conv_input_grad(
    dy: jax.Array, W: jax.Array, stride: int = 1, pad: int | None = None, in_hw: tuple[int, int] | None = None
) -> jax.Array:
    """``dx`` of a convolution: ``dy`` convolved with ``W'``, the kernel flipped in space with its
    channel axes swapped. Stride 1 "same" (odd kernel): a plain "same" convolution. Otherwise the
    transposed convolution written out: ``dy`` dilated by ``stride`` (``stride - 1`` zeros between
    its pixels), padded by ``k - 1 - pad`` (plus, at the bottom/right, the ``r`` input rows the
    forward's last window did not reach), then a stride-1 convolution, which gives back the
    input's ``in_hw``."""
    Wt = jnp.flip(W, (0, 1)).transpose(0, 1, 3, 2)
    kh, kw = W.shape[:2]
    if stride == 1 and (pad is None or (pad == kh // 2 == kw // 2 and kh % 2 and kw % 2)):
        return conv(dy, Wt)
    if in_hw is None:
        raise ValueError(
            "conv_input_grad needs in_hw, the input's (height, width), for a stride above 1 or a padding "
            "other than 'same': several input sizes give the same output size"
        )
    pads = []
    for n_in, n_out, k in zip(in_hw, dy.shape[1:3], (kh, kw)):
        p = k // 2 if pad is None else pad
        r = n_in + 2 * p - k - stride * (n_out - 1)  # input rows past the last window
        pads.append((k - 1 - p, k - 1 - p + r))
    return jax.lax.conv_general_dilated(
        dy, Wt, (1, 1), pads, lhs_dilation=(stride, stride), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
