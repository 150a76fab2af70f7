"""Scaled dot-product attention with its backward by hand: the plain one, and FlashAttention-2's.

For queries ``q`` (``..., n, d``), keys ``k`` (``..., m, d``) and values ``v`` (``..., m, dv``), any
leading axes (batch, heads) shared by the three:

    S = scale * q k^T        (n, m)   scale = 1 / sqrt(d) unless given
    P = softmax(S) per row   (n, m)   causal: S[i, j] = -inf where j > i (row i sees keys 0 .. i)
    O = P v                  (n, dv)

Backward, for a cotangent ``dO`` (the softmax's Jacobian ``diag(p) - p p^T`` applied per row):

    dv = P^T dO
    dP = dO v^T
    dS = P * (dP - D),  D = rowsum(dP * P) = rowsum(dO * O)   (one number per query row)
    dq = scale * dS k
    dk = scale * dS^T q

``D`` is the softmax's coupling term; ``rowsum(dP * P) = rowsum(dO * O)`` because ``O = P v``, which
is what lets FlashAttention compute it without ``P``.

- ``attention`` keeps ``P`` for the backward: memory grows as ``n * m``.
- ``flash_attention`` is FlashAttention-2's algorithm (Dao, "FlashAttention-2: Faster Attention with
  Better Parallelism and Work Partitioning", 2023; FlashAttention, Dao et al. 2022): the forward
  walks the key/value blocks of each query block with the online softmax (a running row maximum
  ``m`` and sum ``l``, the accumulator rescaled by ``exp(m_old - m_new)`` when the maximum grows)
  and saves only ``O`` and each row's log-sum-exp ``L = m + log l``; the backward recomputes each
  block's probabilities as ``P_ij = exp(S_ij - L_i)``, with ``D = rowsum(dO * O)`` from the whole
  row. Memory grows as ``n + m`` (the blocks' scratch is ``block_q * block_k``). Any sequence
  length: the last block may be ragged (padded; padded keys masked out, padded query rows dropped).

Both are ``jax.custom_vjp`` functions whose backward is the hand one (``*_forward`` / ``*_backward``
are the pieces, also used by ``layers.MultiHeadAttention``); ``jaxgd.check(attention, q, k, v)``
proves each against autodiff of its forward and finite differences. The bench's ``attention``
section measures their memory (XLA's ``memory_analysis()`` of the compiled step) and time beside
``jax.grad`` of the plain formula, ``jax.nn.dot_product_attention`` and PyTorch's
``scaled_dot_product_attention``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

# flash_attention's default block sizes: of those tried (256 to 1,024 rows each) the fastest value_and_grad step
# on a 2-core CPU at 4 heads x 4,096 tokens x 64 features whose temporaries stay within 1/32 of jax.grad's
# (the bench's ``attention`` section records both).
BLOCK_Q = 256
BLOCK_K = 512


def default_scale(d: int) -> float:
    """``1 / sqrt(d)``: Vaswani et al.'s scale, PyTorch's and ``jax.nn.dot_product_attention``'s default."""
    return 1.0 / math.sqrt(d)


def _check(q, k, v, causal):
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"attention needs q, k, v of the same rank >= 2 (..., tokens, features); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"attention's q, k, v must share their leading axes; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"attention needs q and k with the same feature size and k, v with the same number of tokens; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def causal_mask(n: int, m: int, row0=0, col0=0) -> jax.Array:
    """``True`` where query ``row0 + i`` may see key ``col0 + j`` (``j <= i``: top-left aligned, as PyTorch's
    ``is_causal``)."""
    return (row0 + jnp.arange(n))[:, None] >= (col0 + jnp.arange(m))[None, :]


# ------------------------------------------------------------------------------ plain: keeps P


def attention_forward(q, k, v, causal=False, scale=None):
    """``(O, residuals)``; the residuals are ``(q, k, v, P)``."""
    _check(q, k, v, causal)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    s = jnp.einsum("...nd,...md->...nm", q, k) * jnp.asarray(scale, q.dtype)
    if causal:
        s = jnp.where(causal_mask(q.shape[-2], k.shape[-2]), s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("...nm,...me->...ne", p, v), (q, k, v, p)


def attention_backward(residuals, do, causal=False, scale=None):
    """``(dq, dk, dv)`` from ``attention_forward``'s residuals and the cotangent ``dO`` (the module docstring's
    formulas; masked entries have ``P = 0``, so ``dS = 0`` there without a mask)."""
    q, k, v, p = residuals
    scale = jnp.asarray(default_scale(q.shape[-1]) if scale is None else scale, q.dtype)
    dv = jnp.einsum("...nm,...ne->...me", p, do)
    dp = jnp.einsum("...ne,...me->...nm", do, v)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    dq = jnp.einsum("...nm,...md->...nd", ds, k) * scale
    dk = jnp.einsum("...nm,...nd->...md", ds, q) * scale
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q, k, v, causal, scale):
    return attention_forward(q, k, v, causal, scale)[0]


def _attention_fwd(q, k, v, causal, scale):
    return attention_forward(q, k, v, causal, scale)


def _attention_bwd(causal, scale, residuals, do):
    return attention_backward(residuals, do, causal, scale)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False, scale: float | None = None):
    """``softmax(scale * q k^T) v`` over the last two axes (any leading axes), with the hand backward that keeps the
    probabilities ``P`` (memory ``n * m`` per head). ``causal``: row ``i`` sees keys ``0 .. i``."""
    return _attention(q, k, v, bool(causal), None if scale is None else float(scale))


# ------------------------------------------------------------------------------ FlashAttention-2


def _blocks(x, size):
    """``(b, n, f) -> (n_blocks, b, size, f)``, zero-padded to a whole number of blocks."""
    b, n, f = x.shape
    nb = -(-n // size)
    x = jnp.pad(x, ((0, 0), (0, nb * size - n), (0, 0)))
    return x.reshape(b, nb, size, f).transpose(1, 0, 2, 3)


def _unblocks(x, n):
    """The inverse of ``_blocks``: ``(n_blocks, b, size, f) -> (b, n, f)``."""
    nb, b, size, f = x.shape
    return x.transpose(1, 0, 2, 3).reshape(b, nb * size, f)[:, :n]


def _masked(s, i, j, bq, bk, m, causal, fill):
    """``s`` (block ``(i, j)``'s scores or probabilities) with ``fill`` where the entry is not real: keys past
    ``m`` are padding; with ``causal``, key ``j`` past query ``i``. Without either, ``s`` as it is (no pass over
    the block)."""
    if not causal and m % bk == 0:
        return s
    cols = j * bk + jnp.arange(bk)
    mask = jnp.broadcast_to(cols[None, :] < m, (bq, bk))
    if causal:
        mask = mask & causal_mask(bq, bk, i * bq, j * bk)
    return jnp.where(mask, s, fill)


def _flat(x):
    return x.reshape((-1,) + x.shape[-2:])


def flash_forward(q, k, v, causal=False, scale=None, block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(O, residuals)`` by FlashAttention-2's forward; the residuals are ``(q, k, v, O, L)`` with ``L`` each row's
    log-sum-exp of ``S`` (no ``n x m`` array is kept)."""
    _check(q, k, v, causal)
    lead, n, m = q.shape[:-2], q.shape[-2], k.shape[-2]
    scale = default_scale(q.shape[-1]) if scale is None else scale
    bq, bk = min(block_q, n), min(block_k, m)
    dt = q.dtype
    qb, kb, vb = _blocks(_flat(q) * jnp.asarray(scale, dt), bq), _blocks(_flat(k), bk), _blocks(_flat(v), bk)
    b = qb.shape[1]

    def query_block(args):
        i, qi = args

        def key_block(carry, args):
            acc, row_max, row_sum = carry
            j, kj, vj = args
            s = _masked(jnp.einsum("bqd,bkd->bqk", qi, kj), i, j, bq, bk, m, causal, -jnp.inf)
            new_max = jnp.maximum(row_max, s.max(-1))
            safe = jnp.where(new_max == -jnp.inf, 0.0, new_max)  # a row that has seen no key yet
            p = jnp.exp(s - safe[..., None])
            alpha = jnp.exp(row_max - safe)
            acc = acc * alpha[..., None] + jnp.einsum("bqk,bke->bqe", p, vj)
            return (acc, new_max, row_sum * alpha + p.sum(-1)), None

        init = (
            jnp.zeros((b, bq, v.shape[-1]), dt),
            jnp.full((b, bq), -jnp.inf, dt),
            jnp.zeros((b, bq), dt),
        )
        (acc, row_max, row_sum), _ = lax.scan(key_block, init, (jnp.arange(kb.shape[0]), kb, vb))
        row_sum = jnp.where(row_sum == 0, 1.0, row_sum)  # padded query rows (causal: never all-masked otherwise)
        return acc / row_sum[..., None], row_max + jnp.log(row_sum)

    ob, lse = lax.map(query_block, (jnp.arange(qb.shape[0]), qb))
    o = _unblocks(ob, n).reshape(lead + (n, v.shape[-1]))
    lse = _unblocks(lse[..., None], n)[..., 0].reshape(lead + (n,))
    return o, (q, k, v, o, lse)


def flash_backward(residuals, do, causal=False, scale=None, block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(dq, dk, dv)`` by FlashAttention-2's backward: ``D = rowsum(dO * O)`` per row, then for each key block
    ``j`` (outer loop) and query block ``i`` (inner), ``P_ij = exp(S_ij - L_i)`` recomputed, ``dv_j += P_ij^T dO_i``,
    ``dS_ij = P_ij * (dO_i v_j^T - D_i)``, ``dk_j += scale * dS_ij^T q_i`` and ``dq_i += scale * dS_ij k_j``."""
    q, k, v, o, lse = residuals
    lead, n, m = q.shape[:-2], q.shape[-2], k.shape[-2]
    dt = q.dtype
    scale = jnp.asarray(default_scale(q.shape[-1]) if scale is None else scale, dt)
    bq, bk = min(block_q, n), min(block_k, m)
    big_d = jnp.sum(do * o, axis=-1)  # D: the whole row's, never a block's
    qb, dob = _blocks(_flat(q) * scale, bq), _blocks(_flat(do), bq)
    lb, db = (_blocks(_flat(x[..., None]), bq)[..., 0] for x in (lse, big_d))
    kb, vb = _blocks(_flat(k), bk), _blocks(_flat(v), bk)

    def key_block(dq, args):
        j, kj, vj = args

        def query_block(carry, args):
            dk, dv = carry
            i, qi, doi, li, di = args
            s = jnp.einsum("bqd,bkd->bqk", qi, kj)  # q pre-scaled
            p = _masked(jnp.exp(s - li[..., None]), i, j, bq, bk, m, causal, 0.0)
            dv = dv + jnp.einsum("bqk,bqe->bke", p, doi)
            ds = p * (jnp.einsum("bqe,bke->bqk", doi, vj) - di[..., None])
            dk = dk + jnp.einsum("bqk,bqd->bkd", ds, qi)
            return (dk, dv), jnp.einsum("bqk,bkd->bqd", ds, kj)

        init = (jnp.zeros_like(kj), jnp.zeros_like(vj))
        xs = (jnp.arange(qb.shape[0]), qb, dob, lb, db)
        (dk, dv), dq_j = lax.scan(query_block, init, xs)
        return dq + dq_j, (dk, dv)  # dk = sum dS^T (scale q): scaled already

    dq, (dkb, dvb) = lax.scan(key_block, jnp.zeros_like(qb), (jnp.arange(kb.shape[0]), kb, vb))
    dq = _unblocks(dq * scale, n).reshape(lead + (n, q.shape[-1]))
    dk = _unblocks(dkb, m).reshape(lead + (m, k.shape[-1]))
    dv = _unblocks(dvb, m).reshape(lead + (m, v.shape[-1]))
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _flash(q, k, v, causal, scale, block_q, block_k):
    return flash_forward(q, k, v, causal, scale, block_q, block_k)[0]


def _flash_fwd(q, k, v, causal, scale, block_q, block_k):
    return flash_forward(q, k, v, causal, scale, block_q, block_k)


def _flash_bwd(causal, scale, block_q, block_k, residuals, do):
    return flash_backward(residuals, do, causal, scale, block_q, block_k)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
):
    """``attention`` by FlashAttention-2's algorithm: the same numbers (up to rounding), memory linear in the
    sequence length (``O`` and each row's log-sum-exp are all the backward keeps). ``block_q``/``block_k``: rows
    of the query and key blocks (any sequence length; the last block may be ragged)."""
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"flash_attention's {name} must be a positive integer, got {size!r}")
    return _flash(q, k, v, bool(causal), None if scale is None else float(scale), block_q, block_k)
