"""One model system: a sequential model is a tuple of layers, and its gradient is the generic
reverse pass (the delta recursion over layers, each layer's hand-written ``backward``).

    model = Model(layers, in_shape, loss="cross_entropy")
    params, state = model.init(key)                               # one entry per layer, {} if none
    out, state = model.apply(params, state, x, train, key)
    loss, out, grads, state = model.grad(params, state, x, y, key)  # by hand: no jax.grad

``loss`` is named once, in the model: its hand gradient, ``jax.grad`` of ``apply`` and the
evaluation in ``train.fit`` all use it. Three gradients of the same model (``train.GRADS``):

- ``"hand"``:     ``model.grad``, the generic reverse pass below.
- ``"autodiff"``: ``jax.value_and_grad`` of the forward (JAX differentiates every layer itself).
- ``"vjp"``:      ``jax.value_and_grad`` through ``layers.hand_vjp``, each hand backward as a
                  ``jax.custom_vjp``: JAX's machinery driving our derivatives.

The CIFAR-2 MLP of INF265 project 1 (``mlp``), DD2424's linear softmax (``linear_softmax``) and
the nine MNIST models of CSI 5340 homework 2 (``mnist_zoo``) are all such models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxgd import layers as L
from jaxgd import losses


@dataclasses.dataclass(frozen=True)
class Model:
    """A sequential model: ``layers`` applied in order to examples of shape ``in_shape``
    (no batch axis), trained on ``loss`` (a name in ``losses.LOSSES``, or a ``losses.CrossEntropy``)."""

    layers: tuple
    in_shape: tuple
    loss: str | losses.CrossEntropy = "cross_entropy"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "in_shape", tuple(int(s) for s in self.in_shape))
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, L.Layer):
                raise ValueError(
                    f"layer {i} is {layer!r}, not a layer: build layers with jaxgd.layers "
                    "(dense(128), relu(), conv2d(32), max_pool(2), flatten(), dropout(0.5), batch_norm())"
                )
        losses.get_loss(self.loss)
        self.shapes()  # every layer accepts its input shape, or a clear error now

    def shapes(self) -> list[tuple]:
        """The per-example shape entering each layer, then the output's."""
        return L.sequence_shapes(self.layers, self.in_shape)

    def init(self, key, dtype=jnp.float32):
        """``(params, state)``: layer ``i`` initialises from ``fold_in(key, i)``. Op by op: as one
        jitted program the zoo's nine inits compiled 3x longer (11 programs in 8 s against 26 small,
        shared ones in 2.4 s)."""
        params, state, _ = L.sequence_init(self.layers, key, self.in_shape, dtype)
        return params, state

    def empty_state(self) -> list:
        """The state of a model whose layers keep none (``[{}, ...]``), so that ``state=None`` works."""
        stateful = [str(l) for l in L.walk(self.layers) if isinstance(l, L.BatchNorm)]
        if stateful:
            raise ValueError(
                f"this model has layers with state ({', '.join(stateful)}): pass the state from "
                "params, state = model.init(key) (fit: model_state=state)"
            )
        return L.stateless(self.layers)

    def _check(self, params, state, x):
        n = len(self.layers)
        if len(params) != n or len(state) != n:
            raise ValueError(
                f"{n} layers but {len(params)} params / {len(state)} state entries: build them with model.init(key)"
            )
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"model input must have shape (batch, {', '.join(map(str, self.in_shape))}); got {tuple(x.shape)}"
            )

    def forward(self, params, state, x, train=False, key=None):
        """``(out, new_state, residuals)``. In training, dropout layer ``i`` draws its mask from
        ``fold_in(key, i)`` and batch norm uses (and updates) batch statistics."""
        state = self.empty_state() if state is None else state
        self._check(params, state, x)
        return L.sequence_forward(self.layers, params, state, x, train=train, key=key)

    def backward(self, params, residuals, dout, *, with_input=False):
        """The reverse pass (``layers.sequence_backward``): ``delta <- dL/dout``, then for each
        layer from the last, ``(grads_i, delta) <- layer_i.backward(params_i, residuals_i, delta)``.
        Returns the grads, or ``(grads, dx)`` with ``with_input``."""
        grads, dx = L.sequence_backward(self.layers, params, residuals, dout)
        return (grads, dx) if with_input else grads

    def apply(self, params, state, x, train=False, key=None, *, hand_vjp=False):
        """``(out, new_state)``; ``hand_vjp=True`` runs each layer as its ``layers.hand_vjp`` twin."""
        if not hand_vjp:
            out, new_state, _ = self.forward(params, state, x, train, key)
            return out, new_state
        state = self.empty_state() if state is None else state
        self._check(params, state, x)
        new_state = []
        for i, (layer, p, s) in enumerate(zip(self.layers, params, state)):
            x, s = L.hand_vjp(layer, bool(train))(p, s, x, None if key is None else jax.random.fold_in(key, i))
            new_state.append(s)
        return x, new_state

    def grad(self, params, state, x, y, key=None):
        """``(loss, out, dloss/dparams, new_state)`` of a training step, entirely by hand:
        forward with residuals, the loss's derivative ``losses.get_loss(loss)[1]``, ``backward``."""
        loss_fn, loss_grad = losses.get_loss(self.loss)
        out, new_state, res = self.forward(params, state, x, True, key)
        return loss_fn(out, y), out, self.backward(params, res, loss_grad(out, y)), new_state

    def macs(self) -> list[int]:
        """Forward multiply-adds per example, per layer (dense and conv; the rest count 0)."""
        return [layer.macs(s) for layer, s in zip(self.layers, self.shapes())]

    def train_flops(self, samples: int) -> float:
        """FLOPs of ``samples`` training examples: forward ``2 macs`` per layer, ``dW`` another
        ``2 macs`` per layer with weights, ``dx`` ``2 macs`` for every layer after the first one with
        weights (nothing needs the input's gradient). A block of branches counts as one layer
        (its branches' macs summed)."""
        macs = self.macs()  # > 0 exactly for the layers with weights (dense, conv)
        first = next((i for i, m in enumerate(macs) if m), len(macs))
        per = sum(4 * m + 2 * m * (i > first) for i, m in enumerate(macs))
        return float(per) * samples

    def describe(self) -> list[str]:
        return [str(layer) for layer in self.layers]


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


# ------------------------------------------------------------------------------ the course reports' models


def mlp(
    sizes: Sequence[int],
    activation: str | Sequence[str] = "relu",
    init: str = "torch",
    loss: str | losses.CrossEntropy = "cross_entropy",
) -> Model:
    """Dense layers of widths ``sizes = (d_0, ..., d_L)``, ``activation`` after every hidden one
    (a name, or one per hidden layer); the output is linear (logits). INF265 project 1's CIFAR-2
    model is ``mlp((3072, 512, 128, 32, 2))``, 1,643,234 parameters."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
    acts = (activation,) * (len(sizes) - 2) if isinstance(activation, str) else tuple(activation)
    if len(acts) != len(sizes) - 2:
        raise ValueError(f"{len(acts)} activations for {len(sizes) - 2} hidden layers: give one per hidden layer")
    layers: list[L.Layer] = []
    for i, width in enumerate(sizes[1:]):
        layers.append(L.dense(width, init))
        if i < len(acts):
            layers.append(L.Activation(acts[i]))
    return Model(tuple(layers), (sizes[0],), loss)


def linear_softmax(d_in: int = 3072, classes: int = 10) -> Model:
    """DD2424 assignment 1: ``P = softmax(x W + b)``, one dense layer trained on cross-entropy."""
    return Model((L.dense(classes),), (d_in,))


# The MNIST zoo of CSI 5340 homework 2: three families, each plain, with dropout, and with batch
# norm. Dropout sits after each hidden activation (after each pool in the CNN) and, in softmax
# regression, on the input pixels; batch norm sits between each hidden dense/conv layer and its
# ReLU, and on the input pixels of softmax regression (it has no hidden layer).
ZOO_FAMILIES = ("softmax", "mlp", "cnn")
ZOO_VARIANTS = ("plain", "dropout", "batchnorm")


def mnist_zoo(family: str, variant: str = "plain", conv_impl: str = "auto", weight_grad: str = "conv") -> Model:
    """One of the 9 MNIST models; input is a (28, 28, 1) image.

    - softmax: flatten - dense 10                                       (7,850 params)
    - mlp:     flatten - dense 256 - relu - dense 128 - relu - dense 10 (235,146 params)
    - cnn:     conv 3x3x32 - relu - pool 2 - conv 3x3x64 - relu - pool 2 - flatten
               - dense 128 - relu - dense 10                             (421,642 params)

    ``dropout``: rate 0.2 on softmax regression's input, 0.5 after the MLP's hidden ReLUs, 0.25
    after each CNN pool and 0.5 after its dense ReLU. ``batchnorm``: on the input of softmax
    regression, before every hidden ReLU of the MLP and the CNN. ``conv_impl`` and ``weight_grad``
    pick the convolutions' forward and ``dW`` (``layers.conv2d``'s ``impl`` and ``weight_grad``).
    """
    if family not in ZOO_FAMILIES or variant not in ZOO_VARIANTS:
        raise ValueError(f"unknown model {family!r}/{variant!r}; families {ZOO_FAMILIES}, variants {ZOO_VARIANTS}")
    drop, bn = variant == "dropout", variant == "batchnorm"

    def block(linear, rate, pool=False):  # linear - [batch norm] - relu - [max pool] - [dropout]
        return [linear] + [L.batch_norm()] * bn + [L.relu()] + [L.max_pool(2)] * pool + [L.dropout(rate)] * drop

    if family == "softmax":
        layers = [L.flatten()] + [L.dropout(0.2)] * drop + [L.batch_norm()] * bn + [L.dense(10)]
    elif family == "mlp":
        layers = [L.flatten()] + block(L.dense(256), 0.5) + block(L.dense(128), 0.5) + [L.dense(10)]
    else:
        conv = lambda c: L.conv2d(c, 3, conv_impl, weight_grad=weight_grad)
        layers = (
            block(conv(32), 0.25, pool=True)
            + block(conv(64), 0.25, pool=True)
            + [L.flatten()]
            + block(L.dense(128), 0.5)
            + [L.dense(10)]
        )
    return Model(tuple(layers), (28, 28, 1))


# ------------------------------------------------------------------------------ a residual network


def _conv_bn(features, stride=1, size=3):
    return (L.conv2d(features, size, stride=stride), L.batch_norm())


def resnet_depth(widths: Sequence[int], blocks: int) -> int:
    """The n of a ResNet-n: two convs per block, plus the stem conv and the dense layer."""
    return 2 * len(widths) * blocks + 2


def resnet(
    widths: Sequence[int] = (16, 32, 64), blocks: int = 1, classes: int = 10, in_shape: tuple[int, ...] = (32, 32, 3)
) -> Model:
    """A small residual network for CIFAR in the shape of He et al. (2016)'s CIFAR ResNets:

        conv 3x3 (widths[0]) - bn - relu
        per stage s (stride 1 for the first, 2 after): ``blocks`` residual blocks, each
            add(conv 3x3 - bn - relu - conv 3x3 - bn | shortcut) - relu
        where the shortcut is the identity, or a 1x1 stride-2 conv - bn where the block halves the
        size and widens (the projection shortcut)
        global average pool - dense ``classes``

    Depth ``resnet_depth(widths, blocks)`` weighted layers (projections aside): ``resnet()`` is
    ResNet-8 (78,378 parameters with the batch norms', for CIFAR-10), ``blocks=3`` ResNet-20.
    Every gradient is the hand reverse pass: the blocks are ``layers.residual``, whose backward
    adds the two paths' input gradients.
    """
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1 or blocks < 1 or classes < 1:
        raise ValueError(f"resnet needs widths >= 1, blocks >= 1 and classes >= 1; got {widths}, {blocks}, {classes}")
    layers = [*_conv_bn(widths[0]), L.relu()]
    c_in = widths[0]
    for s, w in enumerate(widths):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            shortcut = _conv_bn(w, stride, 1) if stride != 1 or w != c_in else ()
            layers += [L.residual((*_conv_bn(w, stride), L.relu(), *_conv_bn(w)), shortcut), L.relu()]
            c_in = w
    layers += [L.global_avg_pool(), L.dense(classes)]
    return Model(tuple(layers), in_shape)


def vit(
    patch: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_dim: int | None = None,
    classes: int = 10,
    in_shape: tuple[int, ...] = (28, 28, 1),
    pool: str = "class",
    attention: str = "plain",
) -> Model:
    """A vision transformer (Dosovitskiy et al. 2021), every gradient by hand:

        patch_embed(patch, dim) - [class_token] - position_embedding
        depth x transformer_block(dim, heads, mlp_dim)        (pre-norm: x + MHSA(LN x), x + MLP(LN x))
        layer_norm - take_token(0) (``pool="class"``) or token_mean (``pool="mean"``) - dense(classes)

    ``attention``: ``"plain"`` or ``"flash"`` (FlashAttention-2's backward in every block)."""
    if pool not in ("class", "mean"):
        raise ValueError(f"vit pool must be 'class' or 'mean', got {pool!r}")
    if min(patch, dim, depth, heads, classes) < 1:
        raise ValueError(f"vit needs patch, dim, depth, heads and classes >= 1; got {patch}, {dim}, {depth}, {heads}")
    layers: list[L.Layer] = [L.patch_embed(patch, dim)]
    layers += [L.class_token()] if pool == "class" else []
    layers += [L.position_embedding()]
    for _ in range(depth):
        layers += L.transformer_block(dim, heads, mlp_dim, impl=attention)
    layers += [L.layer_norm(), L.take_token(0) if pool == "class" else L.token_mean(), L.dense(classes)]
    return Model(tuple(layers), tuple(in_shape))


# ------------------------------------------------------------------------------ airbench's network

AIRBENCH_WIDTHS = (64, 256, 256)


def airbench(
    widths: Sequence[int] = AIRBENCH_WIDTHS,
    classes: int = 10,
    in_shape: tuple[int, ...] = (32, 32, 3),
    bn_momentum: float = 0.4,
    logit_scale: float = 1 / 9,
    label_smoothing: float = 0.2,
    conv_impl: str = "auto",
    weight_grad: str = "conv",
) -> Model:
    """The network of airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
    arXiv 2404.00498; KellerJordan/cifar10-airbench), a plain chain:

        conv 2x2 "valid" (2 * 3 * 2 * 2 = 24 filters, with bias): the whitening layer, whose
            weights are set from the training images' patch covariance (experiments.airbench.whiten)
            and never trained; then GELU
        three groups (widths 64, 256, 256), each
            conv 3x3 (no bias, dirac init) - max pool 2 (cropping: 31 -> 15 -> 7 -> 3)
            - batch norm - GELU - conv 3x3 (no bias, dirac init) - batch norm - GELU
        max pool 3 (3 x 3 -> 1 x 1, the global max) - flatten - dense ``classes`` (no bias) - scale 1/9

    Batch norm as airbench's: eps 1e-12, running statistics ``0.6 r + 0.4 batch`` (PyTorch's
    momentum 0.4 = 1 - airbench's 0.6); its scale stays 1 (airbench does not train it: the
    optimizer leaves it out) and its shift trains. The loss is airbench's: cross-entropy summed over
    the batch with label smoothing 0.2. Every gradient is the hand reverse pass of these layers.
    ``conv_impl`` and ``weight_grad`` choose how the 3x3 convolutions compute their forward and
    their ``dW`` (``layers.conv2d``'s ``impl`` and ``weight_grad``): the same network either way,
    equal up to rounding; ``jaxgd bench``'s ``airbench_epoch`` section times both settings.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1 or classes < 1:
        raise ValueError(f"airbench needs three widths >= 1 and classes >= 1; got {widths}, {classes}")
    c = int(in_shape[-1])
    layers = [L.conv2d(2 * c * 2 * 2, 2, padding="valid"), L.gelu()]
    for w in widths:
        conv = L.conv2d(w, 3, conv_impl, init="dirac", bias=False, weight_grad=weight_grad)
        layers += [
            conv,
            L.max_pool(2, crop=True),
            L.batch_norm(bn_momentum, 1e-12),
            L.gelu(),
            conv,
            L.batch_norm(bn_momentum, 1e-12),
            L.gelu(),
        ]
    layers += [L.max_pool(3, crop=True), L.flatten(), L.dense(classes, bias=False), L.scale(logit_scale)]
    return Model(tuple(layers), in_shape, losses.CrossEntropy(label_smoothing, "sum"))
