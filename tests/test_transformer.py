"""The transformer's layers: jaxgd.check on each (float64 and float32, finite differences, jit, vmap; a ViT's whole
reverse pass against jax.grad is in the quick profile's test), the attention layer against PyTorch's nn.MultiheadAttention and patch_embed
against a strided convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_peer

import jaxgd
from jaxgd import layers as L
from jaxgd import models

LAYERS = [  # the plain multi_head_attention is checked inside transformer_block's first layer
    (L.multi_head_attention(2, causal=True, impl="flash"), (5, 4)),
    (L.patch_embed(2, 3), (4, 6, 2)),
    (L.position_embedding(), (3, 4)),
    (L.class_token(), (3, 4)),
    (L.take_token(0), (3, 4)),
    (L.token_mean(), (3, 4)),
    (L.token_dense(3), (3, 4)),
    (L.transformer_block(4, 2, 8)[0], (3, 4)),
]


@pytest.mark.parametrize("layer,shape", LAYERS, ids=[str(l) for l, _ in LAYERS])
def test_every_transformer_layer_passes_the_check(layer, shape):
    report = jaxgd.check(layer, shape)
    assert report.passed, str(report)


@pytest.mark.parametrize("impl,causal", [("plain", False), ("flash", True)])
def test_attention_layer_equals_pytorchs_multihead_attention(impl, causal):
    torch = require_peer("torch")
    d, heads, n = 6, 3, 5
    layer = L.multi_head_attention(heads, causal=causal, impl=impl)
    with jax.enable_x64(True):
        params, _, _ = layer.init(jax.random.PRNGKey(1), (n, d), jnp.float64)
        r = np.random.default_rng(0)
        params = {k: jnp.asarray(r.standard_normal(v.shape)) * 0.5 for k, v in params.items()}  # biases not 0
        x, c = r.standard_normal((2, n, d)), r.standard_normal((2, n, d))
        y, _, res = layer.forward(params, {}, jnp.asarray(x))
        grads, dx = layer.backward(params, res, jnp.asarray(c))

    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.asarray(params["W_qkv"]).T))
        mha.in_proj_bias.copy_(torch.tensor(np.asarray(params["b_qkv"])))
        mha.out_proj.weight.copy_(torch.tensor(np.asarray(params["W_o"]).T))
        mha.out_proj.bias.copy_(torch.tensor(np.asarray(params["b_o"])))
    tx = torch.tensor(x, requires_grad=True)
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1) if causal else None
    ty, _ = mha(tx, tx, tx, attn_mask=mask, need_weights=False)
    (ty * torch.tensor(c)).sum().backward()
    tol = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(grads["W_qkv"], mha.in_proj_weight.grad.numpy().T, **tol)
    np.testing.assert_allclose(grads["b_qkv"], mha.in_proj_bias.grad.numpy(), **tol)
    np.testing.assert_allclose(grads["W_o"], mha.out_proj.weight.grad.numpy().T, **tol)
    np.testing.assert_allclose(grads["b_o"], mha.out_proj.bias.grad.numpy(), **tol)


def test_patch_embed_is_a_convolution_with_stride_and_kernel_the_patch():
    layer = L.patch_embed(2, 5)
    params, _, (n, f) = layer.init(jax.random.PRNGKey(0), (4, 6, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 6, 3))
    y, _, _ = layer.forward(params, {}, x)
    kernel = params["W"].reshape(2, 2, 3, 5)  # rows of a patch, its columns, channels: HWIO
    conv = jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(y, (conv + params["b"]).reshape(2, n, f), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make,shape,match",
    [
        (lambda: L.multi_head_attention(3), (4, 8), "divisible by the heads"),
        (lambda: L.multi_head_attention(2, impl="fast"), None, "unknown attention impl"),
        (lambda: L.patch_embed(3, 4), (8, 8, 1), "divisible by 3"),
        (lambda: L.token_mean(), (8,), r"\(tokens, features\)"),
        (lambda: models.vit(pool="max"), None, "pool must be"),
    ],
)
def test_bad_shapes_and_settings_get_one_line_errors(make, shape, match):
    with pytest.raises(ValueError, match=match):
        layer = make()
        layer.init(jax.random.PRNGKey(0), shape)
