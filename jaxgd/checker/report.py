"""The report a check returns: a row per gradient, a finding per wrong one and per failed check."""

from __future__ import annotations

import dataclasses

from jaxgd import gradcheck
from jaxgd.checker.compare import FD_TOLERANCE


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``check`` found. ``rows``: one per gradient (parameter leaf or input) and mode, with
    the largest absolute and relative differences against ``jax.vjp`` in each dtype and the
    finite-difference error in float64, and a verdict (exact / close / wrong). ``findings``: a
    line per wrong gradient (its worst index and suspected cause) and per failed check."""

    subject: str
    in_shape: tuple
    batch: int
    passed: bool
    rows: tuple
    findings: tuple
    checks: tuple
    on: str | None = None  # what a function was checked at (``check(f, *args)``), instead of a batch
    rules: tuple = ()  # the custom rules found inside a function, each where it is defined and called

    def as_dict(self) -> dict:
        return {
            "subject": self.subject,
            "in_shape": list(self.in_shape),
            "batch": self.batch,
            "passed": self.passed,
            "rows": [dict(r) for r in self.rows],
            "findings": list(self.findings),
            "checks": [dict(c) for c in self.checks],
            "on": self.on,
            "rules": list(self.rules),
        }

    def causes(self) -> list[str]:
        return [f["cause"] for f in self.findings]

    def __str__(self):
        n_wrong = sum(r["verdict"] == "wrong" for r in self.rows)
        head = (
            "PASSED"
            if self.passed
            else f"FAILED ({n_wrong} of {len(self.rows)} gradients wrong)"
            if n_wrong
            else "FAILED"
        )
        at = self.on or f"on a batch of {self.batch} x {self.in_shape}"
        lines = [f"check {self.subject} {at}: {head}", ""]
        cols = ("gradient", "mode", "verdict", "float64 abs", "float64 rel", "float32 rel", "finite diff rel")
        table = [cols] + [
            (
                r["leaf"],
                r["mode"],
                r["verdict"],
                _num(r.get("float64_abs")),
                _num(r.get("float64_rel")),
                _num(r.get("float32_rel")),
                _num(r.get("fd_rel")),
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        failed = [c for c in self.checks if not c["ok"]]
        lines.append("")
        kinds = dict.fromkeys(c["name"].split(" (")[0] for c in self.checks)
        lines.append(
            f"checks: {len(self.checks) - len(failed)} of {len(self.checks)} passed"
            + ("" if failed else f" ({', '.join(kinds)})")
        )
        for f in self.findings:
            lines.append(f"- {f['where']}: {f['cause']}")
        if self.rules:
            lines += ["", "custom rules inside:"] + [f"- {r}" for r in self.rules]
        return "\n".join(lines)


def _num(v):
    return "-" if v is None else "0" if v == 0 else f"{v:.1e}"


def row(name, mode, per_dtype, truth) -> tuple[dict, dict | None]:
    """A gradient's row of the report (its errors in each dtype, the finite differences' in float64,
    and its verdict) and its finding when wrong: the first dtype's cause and worst index."""
    row, wrong, exact = {"leaf": name, "mode": mode}, [], True
    for dtype, c in per_dtype.items():
        row[f"{dtype}_abs"], row[f"{dtype}_rel"] = c["abs"], c["rel"]
        exact &= c["abs"] == 0
        if c["cause"]:
            wrong.append((dtype, c))
        if dtype == "float64":
            row["fd_rel"] = c.get("fd_rel")
            if c.get("fd_rel") is not None and c["fd_rel"] > FD_TOLERANCE and not c["cause"]:
                wrong.append(
                    (
                        dtype,
                        {
                            **c,
                            "kind": "observation",
                            "cause": f"finite differences disagree (max rel {c['fd_rel']:.1e}) although "
                            f"{truth} agrees: is the forward differentiable here (a kink inside "
                            "the stencil)?",
                        },
                    )
                )
    row["verdict"] = "wrong" if wrong else "exact" if exact else "close"
    if not wrong:
        return row, None
    dtype, c = wrong[0]
    worst = (
        f"; worst at {c['index']}: hand {c['hand_at']:.6g}, true {c['true_at']:.6g}"
        if c.get("index") is not None
        else ""
    )
    return row, {
        "where": f"{name} ({mode}, {dtype})",
        "leaf": name,
        "mode": mode,
        "dtype": dtype,
        "index": c.get("index"),
        "hand": c.get("hand_at"),
        "true": c.get("true_at"),
        "cause": c["cause"] + worst,
        "kind": c.get("kind", "error"),
        "family": c.get("family"),
    }


def cross_findings(rows, modes, names):
    """What the rows say together: which gradients are wrong where."""
    out = []
    wrong = {(r["leaf"], r["mode"]) for r in rows if r["verdict"] == "wrong"}
    if not wrong:
        return out
    if "x" in names and len(names) > 1:
        params_wrong = sorted({l for l, _ in wrong if l != "x"})
        if params_wrong and not any(l == "x" for l, _ in wrong):
            out.append(
                {
                    "where": "summary",
                    "kind": "summary",
                    "cause": f"the input gradient is right but {', '.join(params_wrong)} "
                    "wrong: the error is in the parameters' formulas only",
                }
            )
        elif not params_wrong:
            out.append(
                {
                    "where": "summary",
                    "kind": "summary",
                    "cause": "the parameters' gradients are right but the input gradient "
                    "is wrong: the error is in dx only",
                }
            )
    if set(modes) == {"train", "eval"}:
        in_train = {l for l, m in wrong if m == "train"}
        in_eval = {l for l, m in wrong if m == "eval"}
        if in_train and not in_eval:
            out.append(
                {
                    "where": "summary",
                    "kind": "summary",
                    "cause": "right in eval mode, wrong in training mode: the backward misses "
                    "what training changes (batch statistics depend on x; dropout's "
                    "mask scales dy)",
                }
            )
        elif in_eval and not in_train:
            out.append(
                {
                    "where": "summary",
                    "kind": "summary",
                    "cause": "right in training mode, wrong in eval mode: in eval, batch "
                    "norm uses its running statistics (constants), dropout is off",
                }
            )
    return out


def failed_checks(checks) -> list[dict]:
    """A finding per failed check (jit, vmap, check_vjp, shapes, a backward that raised, ...)."""
    return [{"where": c["name"], "cause": c["detail"], "kind": "check"} for c in checks if not c["ok"]]


def leaf_names(params):
    return [f"param {n}" if n else "param" for n in gradcheck.leaf_names(params)] + ["x"]
