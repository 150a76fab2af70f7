"""``check``: prove a hand-written backward in one call, and say what is wrong when it is wrong.

    report = jaxgd.check(my_layer, (6,))      # a layer: any object with jaxgd's layer contract
    report = jaxgd.check(model)               # a models.Model: its reverse pass and its loss gradient
    print(report)                              # the verdict, a row per gradient, a cause per wrong one
    report.passed, report.as_dict()            # a bool, and JSON

For each mode (train, eval) and dtype (float64, float32), with parameters and running statistics
moved off their constant initial values (a ``scale`` of ones hides a missing factor) and a random
cotangent ``c`` (never all ones: batch norm's output sums to zero per feature, so an all-ones
cotangent gives dx = 0 whatever the backward does), the hand ``backward(params, residuals, c)`` is
compared with ``jax.vjp`` of the forward, leaf by leaf (every parameter and the input):

- ``exact``: equal to the last bit; ``close``: ``max |hand - vjp| / max |vjp|`` within
  ``VJP_TOLERANCES`` (1e-10 in float64, 1e-4 in float32); ``wrong`` otherwise. The denominator is at
  least ``ZERO_FLOOR`` (1/100) of the problem's largest gradient, so a gradient that is 0 on
  paper (a bias right before batch norm, in training) is not judged by its rounding noise. In
  float32 a gradient may also differ by ``F32_SLACK`` (10) times the largest float32 error
  jax.vjp itself makes on the problem (against float64): a deep network with batch norm over a
  small batch amplifies rounding. float64 is the strict test; float32 checks that the backward
  works in float32 and keeps its numbers.
- In float64, also central finite differences of ``L = sum(c * y)`` on sampled coordinates
  (INF265's elementwise relative error <= 1e-6, with a floor of 1e-5 on the denominator, raised
  to where the difference quotient's own rounding, ``10 eps sum|c y| / h``, stays under 1e-6 of it;
  a stencil that crosses a ReLU or max-pool kink is left out) and ``jax.test_util.check_vjp``
  (random directions).
- The forward's output shape and dtype, the new state's, and each gradient's shape and dtype; in
  eval mode, the state must come back unchanged.
- The backward must run under ``jit`` (every comparison above is compiled; a backward that cannot
  be traced is run eagerly instead, and the check says why it fails under jit) and under ``vmap``
  (two problems stacked) must give what it gives one problem at a time.
- A model, in training: ``model.grad`` (its loss's hand derivative, then the reverse pass) against
  ``jax.grad`` of the loss, on random labels (or targets).

Each wrong gradient gets a diagnosis (``checker.diagnoses``): a family of known mistakes
(``DIAGNOSES``: transposed, not summed or summed over the wrong axis, the wrong dtype, all zero, a
constant factor such as the batch size or -1, the true gradient recomputed with a square weight
transposed or a kernel flipped in space, the other pooling, a broadcast term, a coupling term
through the output (softmax's ``y sum(dy y)``) or through the batch statistics, ``dy`` times a term
of the input (``INPUT_TERMS``: GELU's ``x phi(x)``)) proposes what the hand gradient would be under
its hypothesis, and the cause is printed only when that reproduces the hand gradient within the
check's allowance for it; the first verified one wins. Where none is, what can be seen of where
the wrong entries are (``OBSERVATIONS``: only some coordinates, in one slice of a kernel, near an
image's border for a spatial layer's input gradient, where the input is 0, tied or negative,
examples mixed) is printed as an observation with its numbers, never as a cause. Findings across
gradients and modes (the input gradient right but a parameter's wrong; right in eval but wrong in
training) come after. A backward (or ``model.grad``, or a custom rule) that raises is a failed
check with the error and the line of your code that raised it, never a crash.

A check is a few compiled programs per mode and dtype (the forward, ``jax.vjp`` and the hand
backward as one; the backward under ``vmap``; the finite-difference stencils; a model's loss
gradients), drawn on one problem made on the host. They are reused by a later check only through a
``Programs`` store the caller holds (``check(..., programs=store)``), or, for subjects made only of
jaxgd's own layers (whose behaviour is their fields' values), through the checker's own store: a
second check of ``dense(4)`` on the same shapes compiles nothing, and a layer of yours changed
between two checks is checked as it is now. They run once, so they are compiled with LLVM's
optimisation of the generated code off (``compare.jit``): same computation, rounding that may differ
in the last bits. The bench's ``startup`` section counts them.

The package: ``layer`` (the check of a layer or model), ``function`` (of a custom rule),
``diagnoses``, ``compare`` (tolerances, the per-leaf comparison, the compile helper), ``programs``
(the compiled pieces and their stores), ``report``.
"""

from jaxgd.checker.compare import DTYPES, F32_SLACK, FD_TOLERANCE, MODES, VJP_TOLERANCES, ZERO_FLOOR  # noqa: F401
from jaxgd.checker.diagnoses import DIAGNOSES, INPUT_TERMS, OBSERVATIONS, Diagnosis, Hypothesis, diagnose  # noqa: F401
from jaxgd.checker.function import check_function, custom_rule
from jaxgd.checker.layer import check, is_layer
from jaxgd.checker.programs import Programs
from jaxgd.checker.report import Report

__all__ = [
    "DIAGNOSES",
    "OBSERVATIONS",
    "VJP_TOLERANCES",
    "Diagnosis",
    "Hypothesis",
    "Programs",
    "Report",
    "check",
    "check_function",
    "custom_rule",
    "diagnose",
    "is_layer",
]
