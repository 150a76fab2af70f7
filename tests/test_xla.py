"""jaxgd.xla: the compiler options jaxgd's own programs take, the setting's precedence, and a jaxlib
without the option (a made-up option set): dropped without a word, the fit runs as with XLA's defaults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgd import layers as L
from jaxgd import models, optim, train, xla
from jaxgd.conv import conv


def test_setting_precedence(monkeypatch):
    monkeypatch.delenv(xla.ENV, raising=False)
    assert xla.setting() == "tuned"
    monkeypatch.setenv(xla.ENV, "default")
    assert xla.setting() == "default" and xla.options() == {}
    assert xla.setting("tuned") == "tuned"  # the code's choice wins over the environment
    monkeypatch.setenv(xla.ENV, "fastest")
    with pytest.raises(ValueError, match=r"\$JAXGD_XLA must be one of \('tuned', 'default'\), got 'fastest'"):
        xla.setting()
    with pytest.raises(ValueError, match="xla must be one of"):
        train.Configs(xla="eigen")


def test_tuned_takes_convolutions_off_ynnpack(monkeypatch):
    """On this jaxlib the option exists and reaches the program: XLA:CPU's default compiles a float32
    convolution into a YNNPACK fusion, the tuned options do not."""
    monkeypatch.delenv(xla.ENV, raising=False)
    if jax.default_backend() != "cpu":
        assert xla.options() == {}
        return
    x, w = (
        jnp.ones((8, 14, 14, 32)),
        jnp.ones((3, 3, 32, 64)),
    )  # the MNIST CNN's conv2 (XLA keeps small ones off YNNPACK)
    hlo = {s: xla.jit(conv, s).lower(x, w).compile().as_text() for s in xla.SETTINGS}
    if not xla.options("tuned"):
        pytest.fail(f"this jaxlib ({jax.__version__}) refuses {xla.SETTINGS['tuned']}: re-measure jaxgd.xla's choice")
    assert "__ynn_fusion" in hlo["default"] and "__ynn_fusion" not in hlo["tuned"]
    np.testing.assert_allclose(xla.jit(conv, "tuned")(x, w), xla.jit(conv, "default")(x, w), rtol=1e-6)


def test_an_option_this_jaxlib_lacks_is_dropped(monkeypatch):
    """A fake option set: ``options`` passes nothing, and a fit with it trains exactly as XLA's defaults."""
    monkeypatch.setitem(xla.SETTINGS, "tuned", {"xla_cpu_no_such_option_in_any_jaxlib": "1"})
    assert xla.options("tuned") == {}
    model = models.Model((L.conv2d(3, 3), L.relu(), L.flatten(), L.dense(2)), (5, 5, 1))
    params, _ = model.init(jax.random.PRNGKey(0))
    x = np.random.default_rng(0).standard_normal((16, 5, 5, 1)).astype(np.float32)
    y = (x.sum((1, 2, 3)) > 0).astype(np.int32)
    got = [
        train.fit(
            model,
            params,
            (x, y),
            hparams=optim.sgd_hyperparams(0.1),
            epochs=1,
            batch_size=8,
            configs=train.Configs(xla=s),
        )[0]
        for s in ("tuned", "default")
    ]
    jax.tree_util.tree_map(np.testing.assert_array_equal, *got)


def test_the_mlp_compiles_to_the_same_program_either_way(monkeypatch):
    """The options move convolutions only: an MLP's training step (dots, reductions) compiles to the
    same program with jaxgd's options as with XLA's defaults, so its epochs run as before."""
    monkeypatch.delenv(xla.ENV, raising=False)
    model = models.mlp((64, 32, 10))
    params, state = model.init(jax.random.PRNGKey(0))
    grad = train.make_grad_fn(model)
    x, y = jnp.ones((128, 64)), jnp.zeros((128,), jnp.int32)

    def program(setting):  # the compiled HLO without its module name and metadata
        text = xla.jit(grad, setting).lower(params, state, x, y).compile().as_text()
        return [line.split(", metadata=")[0] for line in text.splitlines()[1:]]

    assert program("tuned") == program("default")
