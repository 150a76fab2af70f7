"""jaxgd.attention: the plain and the FlashAttention-2 backward against jax.grad of the formula (float64, to
1e-12), jaxgd.check, jax.nn.dot_product_attention and PyTorch's scaled_dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_peer

import jaxgd
from jaxgd import attention as A


def plain(q, k, v, causal=False, scale=None):
    """The formula, for jax.grad to differentiate."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ jnp.swapaxes(k, -1, -2) * scale
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((q.shape[-2], k.shape[-2]), bool)), s, -jnp.inf)
    return jax.nn.softmax(s, -1) @ v


def problem(n, m, lead=(2, 3), d=4, dv=5, dtype=np.float64, seed=0):
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal(lead + s) for s in ((n, d), (m, d), (m, dv)))
    c = r.standard_normal(lead + (n, dv))
    return [jnp.asarray(x, dtype) for x in (q, k, v, c)]


def rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


SHAPES = [  # (n, m, causal, block_q, block_k): ragged last blocks, blocks larger than the sequence, n != m
    (10, 10, True, 4, 3),
    (9, 13, False, 4, 5),
    (5, 11, True, 2, 3),
    (6, 4, False, 64, 64),
]


@pytest.mark.parametrize("n,m,causal,bq,bk", SHAPES)
def test_both_backwards_equal_jax_grad_of_the_formula_in_float64(n, m, causal, bq, bk):
    with jax.enable_x64(True):
        q, k, v, c = problem(n, m)
        loss = lambda f: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(c * f(q, k, v)), (0, 1, 2)))
        true_val, true = loss(lambda q, k, v: plain(q, k, v, causal))(q, k, v)
        fns = {
            "attention": lambda q, k, v: A.attention(q, k, v, causal=causal),
            "flash": lambda q, k, v: A.flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk),
        }
        for name, f in fns.items():
            val, grads = loss(f)(q, k, v)
            assert abs(float(val - true_val)) <= 1e-12 * abs(float(true_val)), name
            for g, t, arg in zip(grads, true, "qkv"):
                assert rel(g, t) <= 1e-12, (name, arg, rel(g, t))


def test_flash_keeps_no_n_by_m_array_for_its_backward():
    q, k, v, _ = problem(64, 48, lead=(1,), dtype=np.float32)
    _, res = A.flash_forward(q, k, v, block_q=16, block_k=16)
    assert max(x.size for x in jax.tree_util.tree_leaves(res)) < 64 * 48
    _, res = A.attention_forward(q, k, v)
    assert res[-1].shape == (1, 64, 48)  # the plain one keeps P


def test_jaxgd_check_passes_both():
    q, k, v, _ = problem(6, 6, lead=(2,), d=3, dv=2, dtype=np.float32)
    for f in (
        lambda q, k, v: A.attention(q, k, v),
        lambda q, k, v: A.flash_attention(q, k, v, causal=True, block_q=4, block_k=4),  # ragged, causal
    ):
        report = jaxgd.check(f, q, k, v)
        assert report.passed, str(report)


def test_scale_and_jax_nn_dot_product_attention():
    q, k, v, _ = problem(12, 12, lead=(3,), d=8, dv=8, dtype=np.float32)
    for causal in (False, True):
        # jax.nn's layout is (batch, tokens, heads, features)
        ref = jax.nn.dot_product_attention(*(x.transpose(1, 0, 2)[None] for x in (q, k, v)), is_causal=causal)
        ref = ref[0].transpose(1, 0, 2)
        for f in (A.attention, A.flash_attention):
            np.testing.assert_allclose(f(q, k, v, causal=causal), ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        A.flash_attention(q, k, v, scale=0.3, block_q=5), plain(q, k, v, scale=0.3), rtol=2e-5, atol=2e-6
    )


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_pytorchs_scaled_dot_product_attention(causal):
    torch = require_peer("torch")
    with jax.enable_x64(True):
        q, k, v, c = problem(9, 9, lead=(2, 2), d=4, dv=4)
        tq, tk, tv = (torch.tensor(np.asarray(x), requires_grad=True) for x in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        (out * torch.tensor(np.asarray(c))).sum().backward()
        for f in (A.attention, A.flash_attention):
            o, vjp = jax.vjp(lambda q, k, v: f(q, k, v, causal=causal), q, k, v)
            np.testing.assert_allclose(o, out.detach().numpy(), rtol=1e-12, atol=1e-13)
            for g, t in zip(vjp(c), (tq, tk, tv)):
                np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda q: A.attention(q, q[..., :3, :], q[..., :4, :]), "same number of tokens"),
        (lambda q: A.attention(q, q[0], q[0]), "same rank"),
        (lambda q: A.flash_attention(q, q, q, block_q=0), "block_q must be a positive integer"),
    ],
)
def test_bad_arguments_get_one_line_errors(call, match):
    q = jnp.ones((2, 5, 4))
    with pytest.raises(ValueError, match=match):
        call(q)
