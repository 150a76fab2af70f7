"""Assertions for a user's own test suite, in the style of ``numpy.testing`` and ``chex``.

``assert_backward_correct(subject, ...)`` runs ``jaxgd.check`` and raises ``AssertionError``
whose message is the printed verdict (the table, the diagnoses and the failed checks), so pytest
shows why a hand backward is wrong::

    from jaxgd.testing import assert_backward_correct

    def test_my_dense():
        assert_backward_correct(MyDense(5), (7,))

    def test_my_logsumexp():  # a jax.custom_vjp function, at example arguments
        assert_backward_correct(logsumexp, np.random.default_rng(0).standard_normal((3, 5)))
"""

from __future__ import annotations

from typing import Any

from jaxgd.checker import Report, check

__all__ = ["assert_backward_correct"]


def assert_backward_correct(subject: Any, *args: Any, **kwargs: Any) -> Report:
    """``jaxgd.check(subject, *args, **kwargs)``; raises ``AssertionError`` with the report as its
    message when anything is wrong, else returns the report."""
    report = check(subject, *args, **kwargs)
    if not report.passed:
        raise AssertionError("\n" + str(report))
    return report
