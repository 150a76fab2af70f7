# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Write your own layer, prove it, read what is wrong
#
# A layer in jaxgd is a small frozen dataclass with a forward and a hand-written backward
# (the contract is at the top of [`jaxgd/layers.py`](../jaxgd/layers.py)):
#
# - `forward(params, state, x, *, train, key) -> (y, new_state, residuals)`: the residuals are
#   whatever the backward will need;
# - `backward(params, residuals, dy) -> (dparams, dx)`: given $\bar y = \partial L / \partial y$,
#   the gradients of the parameters and of the input.
#
# [`jaxgd.check`](../jaxgd/checker/__init__.py) proves a backward in one call: in train and eval mode, in
# float64 and float32, against `jax.vjp`, finite differences and `jax.test_util.check_vjp`, under
# `jit` and `vmap`. When a gradient is wrong, it says how. We write two layers and get each wrong
# once, on purpose.

# %%
import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import jaxgd
from jaxgd import layers

# %% [markdown]
# ## A leaky ReLU
#
# $y = x$ for $x > 0$, else $s x$ (slope $s$). Its derivative is $1$ or $s$, so
# $\bar x = \bar y$ where $x > 0$, else $s \bar y$. First the version written in a hurry: the
# backward of a plain ReLU.


# %%
@dataclasses.dataclass(frozen=True)
class HastyLeakyReLU(layers.Layer):
    slope: float = 0.1

    def forward(self, params, state, x, *, train=False, key=None):
        return jnp.where(x > 0, x, self.slope * x), state, x  # residual: x

    def backward(self, params, x, dy):
        return {}, jnp.where(x > 0, dy, 0.0)  # forgot the slope


hasty = jaxgd.check(HastyLeakyReLU(), (6,))
print(hasty)

# %% [markdown]
# No known mistake reproduces this hand gradient, so the report names no cause; it says what it
# observed instead: only *some* coordinates are wrong, exactly those where the input is negative,
# and at the worst one the hand gradient is 0 where the true one is not. That points at the
# $x \le 0$ branch. Fixed:


# %%
@dataclasses.dataclass(frozen=True)
class MyLeakyReLU(HastyLeakyReLU):
    def backward(self, params, x, dy):
        return {}, jnp.where(x > 0, dy, self.slope * dy)


leaky = jaxgd.check(MyLeakyReLU(), (6,))
print(leaky)
print(
    "the same as jaxgd's own:",
    bool(
        jnp.all(
            MyLeakyReLU(0.1).backward({}, jnp.linspace(-1, 1, 5), jnp.ones(5))[1]
            == layers.leaky_relu(0.1).backward(
                {}, layers.leaky_relu(0.1).forward({}, {}, jnp.linspace(-1, 1, 5))[2], jnp.ones(5)
            )[1]
        )
    ),
)

# %% [markdown]
# ## A strided convolution's input gradient
#
# A convolution with stride $s$ reads every $s$-th window. Its input gradient is the classic
# *transposed convolution*: spread $\bar y$ out by the stride ($s - 1$ zeros between its pixels,
# `lhs_dilation`), pad it by $k - 1 - p$, and convolve with the kernel flipped in space and its
# channel axes swapped. The weight gradient stays $\bar W = \mathrm{im2col}(x)^\top \bar y$
# (`layers.conv_weight_grad`). We keep jaxgd's forward (`layers.Conv2D`) and write the backward:


# %%
class MyStridedConv(layers.Conv2D):
    def backward(self, params, x, dy):
        W = params["W"]
        s, p = self.stride, self.size // 2
        dW = layers.conv_weight_grad(x, dy, W.shape, s, p)
        W_flipped = jnp.flip(W, (0, 1)).transpose(0, 1, 3, 2)
        dx = jax.lax.conv_general_dilated(
            dy,
            W_flipped,
            (1, 1),
            self.dx_padding(x, dy),
            lhs_dilation=(s, s),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return {"W": dW, "b": dy.sum((0, 1, 2))}, dx

    def dx_padding(self, x, dy):
        """(before, after) zeros around the dilated dy, for the height and the width."""
        k, p = self.size, self.size // 2
        return [(k - 1 - p, k - 1 - p)] * 2


conv = MyStridedConv(4, 3, stride=2)
on_7x7 = jaxgd.check(conv, (7, 7, 2))
print(on_7x7)

# %% [markdown]
# It passes on a 7 x 7 input. A check is only as good as its inputs, so try an even size:

# %%
on_8x8 = jaxgd.check(conv, (8, 8, 2))
print(on_8x8)

# %% [markdown]
# The parameters' gradients are right; $\bar x$ has the wrong shape: 7 x 7 instead of 8 x 8. With
# stride 2, a 3 x 3 kernel and one pixel of padding, the output of an 8-pixel row has
# $\lfloor (8 + 2 - 3)/2 \rfloor + 1 = 4$ positions; the last window ends at padded position 8,
# one short of the padded row's last pixel (position 9). The forward never read that pixel, and
# the transposed convolution must give it a (zero) gradient: pad $r = n + 2p - k - s(n_{out} - 1)$
# more at the bottom and right. The fix changes the padding only:


# %%
class FixedStridedConv(MyStridedConv):
    def dx_padding(self, x, dy):
        k, s, p = self.size, self.stride, self.size // 2
        return [
            (k - 1 - p, k - 1 - p + n + 2 * p - k - s * (m - 1))  # r more at the end
            for n, m in zip(x.shape[1:3], dy.shape[1:3])
        ]


fixed = [jaxgd.check(FixedStridedConv(4, 3, stride=2), (n, n, 2)) for n in (7, 8)]
print(fixed[1])

# %% [markdown]
# ## Where the hasty leaky ReLU goes wrong, in one picture

# %%
xs = jnp.linspace(-2, 2, 201)
for layer, style, name in ((MyLeakyReLU(0.1), "-", "fixed backward"), (HastyLeakyReLU(0.1), "--", "hasty backward")):
    plt.plot(xs, layer.backward({}, xs, jnp.ones_like(xs))[1], style, label=name)
plt.plot(xs, jax.vmap(jax.grad(lambda v: jnp.where(v > 0, v, 0.1 * v)))(xs), ":", label="jax.grad")
plt.xlabel("x"), plt.ylabel("dy/dx"), plt.legend(), plt.title("leaky ReLU, slope 0.1")
plt.show()

# %% [markdown]
# ## The same check for a `jax.custom_vjp`
#
# Outside jaxgd's layer contract, a JAX engineer writes a backward as a `jax.custom_vjp` rule: a
# numerically stable op, a fused kernel. `jaxgd.check(f, *args)` checks such a rule at example
# arguments against autodiff of the function with its rule stripped. Here is GELU,
# $y = x\,\Phi(x)$, whose derivative by the product rule is $\Phi(x) + x\,\varphi(x)$, written
# with the second term forgotten:


# %%
@jax.custom_vjp
def my_gelu(x):
    return x * jax.scipy.stats.norm.cdf(x)


def my_gelu_fwd(x):
    return my_gelu(x), x


def my_gelu_bwd(x, g):
    return (g * jax.scipy.stats.norm.cdf(x),)  # forgot + x * phi(x)


my_gelu.defvjp(my_gelu_fwd, my_gelu_bwd)
gelu_report = jaxgd.check(my_gelu, jnp.linspace(-3.0, 3.0, 12).reshape(3, 4))
print(gelu_report)

# %% [markdown]
# The diagnosis was fitted and then verified: adding $-1 \cdot \bar y\, x\varphi(x)$ to the true
# gradient gives the hand one to within the tolerance, so the check names the forgotten term. Put it
# back and the rule passes:


# %%
def my_gelu_bwd_fixed(x, g):
    return (g * (jax.scipy.stats.norm.cdf(x) + x * jax.scipy.stats.norm.pdf(x)),)


my_gelu.defvjp(my_gelu_fwd, my_gelu_bwd_fixed)
gelu_fixed = jaxgd.check(my_gelu, jnp.linspace(-3.0, 3.0, 12).reshape(3, 4))
print(str(gelu_fixed).splitlines()[0])  # the verdict line

# %% [markdown]
# From a shell, `jaxgd check my_ops.py:my_gelu --args 3,4` runs the same check on a function in a
# file (and `--in-shape 8,8,3` on a layer); in a test suite, `jaxgd.testing.assert_backward_correct`.
#
# `jaxgd.mistakes.GALLERY` holds twenty-three more classic wrong backwards (transposed products, a mean
# where the loss sums, batch norm without the mean's path, ...), each with the diagnosis the check
# gives. Next: [4. SGD with momentum by hand](04_sgd_by_hand.py).

# %%
CHECKS = {
    "hasty_passed": hasty.passed,
    "leaky_passed": leaky.passed,
    "conv_7x7_passed": on_7x7.passed,
    "conv_8x8_passed": on_8x8.passed,
    "fixed_passed": all(r.passed for r in fixed),
    "hasty_causes": hasty.causes(),
    "conv_8x8_causes": on_8x8.causes(),
    "gelu_passed": gelu_report.passed,
    "gelu_causes": gelu_report.causes(),
    "gelu_fixed_passed": gelu_fixed.passed,
}
