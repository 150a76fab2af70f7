"""Benchmarks, side by side in one run: eager vs jit vs a compiled epoch vs PyTorch, and more.

Every figure is the median (with min and max) of ``repeats`` timed runs after one untimed
warm-up; compile time is measured apart (ahead-of-time ``lower().compile()``). The rows that a
ratio compares are timed in interleaved rounds (``timing.interleaved``: one run of each, then
again), so that a machine slowing down for a while slows them alike. This module runs the
sections, merges them with sections kept from an earlier run (``--keep``) and renders the result;
``bench_sections`` holds the measurements, ``timing`` the harness, ``torch_peers`` the PyTorch
loops they are compared with. The data are random arrays of the
real shapes, so no dataset is needed. Speed is compared only within one run: the ratios are what
to quote, the absolute times drift from run to run.

Sections, in the order they run (``SECTIONS``):

- ``matmul``: the fastest of 1024^3, 2048^3, 4096^3 float32 matmuls (jitted): the machine's
  reference GFLOP/s; every training loop below reports its achieved GFLOP/s as a fraction of it
  (FLOPs: ``models.Model.train_flops``, the dense and conv multiply-adds of the forward, dW and
  dx, without the first layer's dx, which nobody computes).
- ``mlp_epoch``: a CIFAR-2 MLP (3072-512-128-32-2) epoch of 9,000 samples at batch 64 and 256:
  JAX eager (with ``eager``; it compiles a small program per op and shape), a jitted step in a
  Python loop, jaxgd's compiled epoch (hand backprop + hand SGD), and the peers a user would pick
  instead: a PyTorch eager loop of the same model and SGD, the same loop over a
  ``torch.compile``-d model, and flax + optax + ``jax.grad`` with its epoch compiled as one scan
  (``torch_peers``, ``flax_peers``; each row only where installed).
- ``grad``: one gradient (hand backprop vs ``jax.grad``) of that MLP at batch 64 and of the MNIST
  CNN at batch 128. For the MLP, XLA compiles the two to the same matrix products (a test checks
  it), so ``hand/jax.grad MLP`` reads 1 up to noise.
- ``configs``: 8 SGD configs: ``fit``'s default (lax.map on CPU, vmap on accelerators), explicit
  vmap, and 8 sequential fits; time per config-epoch.
- ``cnn_epoch``: the MNIST CNN (``models.mnist_zoo("cnn")``) on 6,000 samples at batch 128:
  jaxgd's compiled epoch with hand gradients (its conv defaults and jaxgd's compiler options,
  ``jaxgd.xla``; the earlier im2col path with XLA's defaults; the lax.conv forward) and with
  ``jax.grad``, vs the same three peers (flax compiled both ways).
- ``conv_parts``: where that epoch's time goes: 3x3 convolutions (``conv_shapes``: the CNN's
  second, 85% of its training FLOPs, and airbench's) part by part, forward (two ways), weight
  gradient (three ways) and input gradient, with XLA's default options and jaxgd's, vs PyTorch's
  (oneDNN) kernels for each, on the same tensors.
- ``scaling``: configs/s of the 8-config grid with its configs sharded over 1/2/4/8 devices, and
  samples/s of the CNN with each minibatch sharded over them (``jaxgd.parallel``); forced CPU
  devices on a CPU (they share its cores).
- ``compile_cache``: ``cache_command`` (default ``jaxgd reproduce --quick``) in two fresh
  processes, first with an empty persistent compilation cache, then with the cache the first
  filled; the seconds each spends getting compiled programs (``jaxgd.compile_cache``).
- ``startup``: ``import jaxgd`` and ``jaxgd.check`` of a dense and of a conv layer in fresh
  processes, empty cache then warm: seconds, programs compiled, peak memory, the second call's
  too; beside another jaxgd tree's (``startup_baseline``) if given (``experiments.startup``).
- ``airbench_epoch`` (only when named): one training epoch of airbench94's network and recipe at
  batch 1,024: jaxgd's compiled epoch (and the same network with its convolutions computed the
  earlier way: im2col, XLA's default options) beside airbench's own PyTorch loop
  (``experiments.airbench_torch``).
- ``grid`` (only when named: minutes on a CPU): the INF265 reports' whole CIFAR-2 grid
  (``cifar2.GRID``, 18 configs x ``grid_epochs`` at batch 64, validation after every epoch) as
  one ``fit``: wall time from the call to the last epoch, compilation included, vs PyTorch
  training the same configs one after another (``grid_torch_configs`` of them timed, their mean
  scaled to the 18).
- ``attention`` (only when named: 4 GB of temporaries at 8,192 tokens): one attention gradient's
  compiled step at each of ``attention_lengths``: the temporaries XLA allocates (``memory_analysis()``)
  and the time of ``jax.grad`` of the formula, of ``jax.nn.dot_product_attention``, jaxgd's plain and
  FlashAttention-2 hand backwards, and PyTorch's ``scaled_dot_product_attention``
  (``bench_attention``).

On a GPU, JAX may run float32 matmuls and convolutions in TF32; the ``matmul`` section measures
which (``float32_matmul_rel_error``) and the PyTorch loops are set to the same precision.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from jaxgd.experiments import flax_peers, timing, torch_peers
from jaxgd.experiments.bench_sections import SECTION_RUNS
from jaxgd.experiments.common import load_json, outdir, provenance, write
from jaxgd.experiments.config import Config, at_least, option
from jaxgd.experiments.protocol import Experiment
from jaxgd.experiments.timing import device_name
from jaxgd.report import markdown_table

SECTIONS = (
    "matmul",
    "mlp_epoch",
    "grad",
    "configs",
    "cnn_epoch",
    "conv_parts",
    "scaling",
    "compile_cache",
    "startup",
    "airbench_epoch",
    "grid",
    "attention",
)
ONLY_WHEN_NAMED = ("airbench_epoch", "grid", "attention")  # minutes and several GB each on a CPU
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ONLY_WHEN_NAMED)


@dataclasses.dataclass(frozen=True)
class BenchConfig(Config):
    NAME = "bench"
    repeats: int = option(5, "timed runs per row (median, min, max), after one untimed warm-up", check=at_least(1))
    sections: tuple[str, ...] = option(
        DEFAULT_SECTIONS, "sections to run ('airbench_epoch' and 'grid' only when named)", choices=SECTIONS
    )
    batch_sizes: tuple[int, ...] = option((64, 256), "MLP epoch batch sizes", check=at_least(1))
    n_mlp: int = option(9000, "MLP epoch samples (CIFAR-2's training set)", check=at_least(1))
    n_cnn: int = option(6000, "CNN epoch samples", check=at_least(1))
    cnn_batch: int = option(128, "CNN batch size", check=at_least(1))
    conv_shapes: tuple[tuple[int, int, int], ...] = option(
        ((14, 32, 64), (32, 64, 64), (16, 64, 256), (8, 256, 256)),
        "3x3 convolutions of the conv_parts section, each 'height,c_in,c_out' (the MNIST CNN's conv2, then airbench's)",
    )
    n_configs: int = option(8, "SGD configs in the configs section", check=at_least(1))
    matmul_sizes: tuple[int, ...] = option((1024, 2048, 4096), "square matmul sizes for the peak", check=at_least(1))
    cnn_variants: bool = option(True, "also time the lax.conv forward and jax.grad CNN epochs")
    eager: bool = option(
        True,
        "time the op-by-op JAX loop of the MLP epoch too (it compiles a small program "
        "per op and shape: most of the quick profile's bench programs)",
    )
    n_lax_conv: int = option(1536, "samples of the (slow) jax.grad-through-lax.conv CNN epoch", check=at_least(1))
    torch: bool = option(True, "time the PyTorch loops too (needs the peers extra: pip install -e '.[peers]')")
    torch_compile: bool = option(True, "with torch, also the torch.compile-d loops (compiling takes a minute or so)")
    flax: bool = option(
        True, "time flax + optax + jax.grad epochs too (needs the peers extra: pip install -e '.[peers]')"
    )
    grid_epochs: int = option(30, "epochs per config of the grid section (the INF265 reports' 30)", check=at_least(1))
    grid_torch_configs: int = option(
        3, "grid configs PyTorch trains (timed; their mean is scaled to the whole grid)", check=at_least(1)
    )
    cache_command: tuple[str, ...] = option(
        ("reproduce", "--quick"),
        "the jaxgd command the compile_cache section runs in fresh processes (--results and --quiet are added)",
    )
    n_airbench: int = option(
        4096, "training images of the airbench_epoch section (4 steps of batch 1,024)", check=at_least(1024)
    )
    scaling_devices: tuple[int, ...] = option(
        (1, 2, 4, 8),
        "device counts of the scaling section (forced CPU devices on a CPU, real ones elsewhere)",
        check=at_least(1),
    )
    startup_baseline: str | None = option(
        None,
        "another jaxgd source tree (e.g. a git worktree of an older commit) "
        "whose startup the startup section measures beside this one's",
        metavar="DIR",
    )
    attention_lengths: tuple[int, ...] = option(
        (256, 1024, 4096, 8192), "sequence lengths of the attention section", check=at_least(1)
    )
    attention_heads: int = option(4, "heads of the attention section", check=at_least(1))
    attention_dim: int = option(64, "features per head of the attention section", check=at_least(1))
    keep: str | None = option(
        None,
        "an earlier bench results file of this device: its sections this run does "
        "not run are kept as they are, with that run's provenance (under 'reused')",
        metavar="FILE",
    )


CONFIG = BenchConfig
# ratio -> the project's target for it ("<= x": lower is better)
TARGETS = {
    "jaxgd/torch bs64": "<= 0.5",
    "jaxgd/torch bs256": "<= 0.9",
    "hand/jax.grad MLP": "<= 1.0",
    "hand/jax.grad CNN": "<= 1.0",
    "hand/jax.grad CNN epoch": "<= 1.0",
    "jaxgd/torch CNN": "<= 0.7",
    "fit default/sequential": "<= 1.0 on CPU, <= 0.25 on GPU",
    "INF265 grid wall s, jaxgd": "<= 10 on GPU",
    "jaxgd/torch.compile bs64": "<= 1.0",
    "jaxgd/torch.compile bs256": "<= 1.0",
    "jaxgd/flax+optax bs64": "<= 1.0",
    "jaxgd/flax+optax bs256": "<= 1.0",
    "compile s, warm cache / empty cache": "<= 0.2",
    "jaxgd/airbench PyTorch epoch": "<= 0.9",
    "attention n=4096 flash/jax.grad temp memory": "<= 1/32",
    "attention n=4096 flash/jax.grad time": "<= 0.9",
    "attention n=8192 flash/jax.grad time": "<= 0.6",
    "attention n=8192 flash/fastest other time": "<= 1.5",
    "best training loop / matmul peak": ">= 0.8",
    "CNN epoch / matmul peak": ">= 0.5",
    "startup: check(dense) s, empty cache": "<= 2",
    "startup: check(dense) programs": "<= 20",
    "startup: check(dense) second call s": "<= 0.3",
    "startup: check(conv2d) s, empty cache": "<= 4",
    # the compile_cache section's command, by default the quick profile: a student's 8 GB laptop runs it
    "cache_command wall s, empty cache": "<= 300",
    "cache_command wall s, warm cache": "<= 120",
    "cache_command programs, empty cache": "<= 400",
    "cache_command peak RSS MB": "<= 3000",
    **{
        f"conv {h}x{h} {ci}->{co} weight gradient jaxgd/torch": "<= 1.2"
        for h, ci, co in ((14, 32, 64), (32, 64, 64), (16, 64, 256), (8, 256, 256))
    },
}


assert set(SECTION_RUNS) == set(SECTIONS)


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    """Run the sections of ``config`` in order. After each one, what is finished so far is written
    to ``bench/<device>_partial.json`` (a run cut short keeps its sections); at the end,
    ``bench/<device>.json`` and its figure, and the partial file is removed."""
    cfg = BenchConfig.make(config)
    torch = torch_peers.available(cfg.torch)
    if verbose and cfg.torch and torch is None:
        log(
            "torch not installed (or not for this device): the PyTorch rows are left out "
            "(pip install 'jaxgd[peers]', or -e '.[peers]' in a checkout)"
        )
    flax = flax_peers.available() if cfg.flax else None
    if verbose and cfg.flax and flax is None:
        log(
            "flax not installed: the flax + optax rows are left out (pip install 'jaxgd[peers]', or -e '.[peers]' in a checkout)"
        )
    t0 = time.time()
    probe = timing.precision_probe()
    torch_precision = None if torch is None else torch_peers.precision_like(torch, probe)
    prov = provenance()
    sections: dict = {}
    kept, reused, before = _kept_sections(cfg)

    def result():
        every = {n: sections.get(n, kept.get(n)) for n in SECTIONS if n in sections or n in kept}
        return {
            "experiment": "bench",
            "device_name": device_name(),
            "config": cfg.to_dict(),
            "sections": every,
            "reused": reused,
            "timing": "interleaved",  # how the rows were timed (older results lack the field: one row after another)
            "targets": TARGETS,
            "torch": None
            if torch is None
            else {
                "version": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": torch_peers.device(),
                "precision": torch_precision,
            },
            "flax": flax,
            "precision": probe,
            "wall_time_s": time.time() - t0,
            "provenance": prov,
        }

    for name in SECTIONS:
        if name not in cfg.sections:
            continue
        if verbose:
            log(f"[bench] {name} ...")
        sections[name] = SECTION_RUNS[name](cfg, torch is not None)
        if name in before:
            sections[name]["before"] = before[name]
        if verbose:
            from jaxgd.report import print_table

            print_table(table({name: sections[name]}))
        write("bench", out, result(), f"{device_name()}_partial.json")
    peak = sections.get("matmul", {"rows": [{}]})["rows"][0].get("gflops")
    if peak:
        loops = [r for n, s in sections.items() if n != "matmul" for r in s["rows"] if "gflops" in r]
        for r in loops:
            r["fraction_of_peak"] = r["gflops"] / peak
        # over kept sections too: each row's fraction is of its own run's peak
        every = {**kept, **sections}
        jaxgd = [r for n, sec in every.items() if n != "matmul" for r in sec["rows"] if r["name"].startswith("jaxgd")]
        jaxgd = [r for r in jaxgd if "fraction_of_peak" in r]
        if jaxgd:
            sections["matmul"]["ratios"]["best training loop / matmul peak"] = max(r["fraction_of_peak"] for r in jaxgd)
        if "fraction_of_peak" in every.get("cnn_epoch", {"rows": [{}]})["rows"][0]:
            # the default CNN epoch (hand gradients, jaxgd's conv defaults)
            sections["matmul"]["ratios"]["CNN epoch / matmul peak"] = every["cnn_epoch"]["rows"][0]["fraction_of_peak"]
    res = result()
    from jaxgd.experiments import figures

    write(
        "bench",
        out,
        res,
        f"{res['device_name']}.json",
        figures=[(f"{res['device_name']}.png", lambda p: figures.bench(res, p))],
    )
    if out is not False:
        (outdir("bench", out) / f"{res['device_name']}_partial.json").unlink(missing_ok=True)
    return res


def _kept_sections(cfg) -> tuple[dict, dict, dict]:
    """``(sections, provenance of each, before)`` from ``cfg.keep``: the sections this run does not
    run, where each came from, and each section it runs again as ``{commit, rows, ratios}`` (a
    rerun section keeps its previous measurement beside the new one: a change's before and after;
    where that measurement had a before of its own, that one stays, so the baseline is the first)."""
    if cfg.keep is None:
        return {}, {}, {}
    path = Path(cfg.keep)
    if not path.is_file():
        raise FileNotFoundError(f"--keep {path}: no such bench results file")
    old = load_json(path)
    if old.get("experiment") != "bench" or old.get("device_name") != device_name():
        raise ValueError(
            f"--keep {path}: not a bench result of this device ({device_name()}); it says "
            f"{old.get('experiment')!r} on {old.get('device_name')!r}"
        )
    origin = {n: (old.get("reused") or {}).get(n, old["provenance"]) for n in old["sections"]}
    kept = {n: s for n, s in old["sections"].items() if n not in cfg.sections}
    before = {
        n: s.get("before")
        or {
            "commit": origin[n].get("commit"),
            "cpu_model": origin[n].get("cpu_model"),
            "rows": s["rows"],
            "ratios": s["ratios"],
        }
        for n, s in old["sections"].items()
        if n in cfg.sections
    }
    return kept, {n: origin[n] for n in kept}, before


def table(sections) -> list[dict]:
    rows = []
    for sec, s in sections.items():
        for r in s["rows"]:
            rows.append(
                {
                    "section": sec,
                    "what": r["name"],
                    "median s": r["median_s"],
                    "min s": r["min_s"],
                    "max s": r["max_s"],
                    "compile s": r.get("compile_s", ""),
                    "GFLOP/s": r.get("gflops", ""),
                    "of peak": r.get("fraction_of_peak", ""),
                }
            )
    return rows


def ratio_rows(res) -> list[dict]:
    return [
        {"section": sec, "ratio": k, "value": v, "target": TARGETS.get(k, "")}
        for sec, s in res["sections"].items()
        for k, v in s["ratios"].items()
    ]


def summary(res) -> list[dict]:
    return table(res["sections"])


def about(res, out) -> str:
    timing_ = (
        "the rows of each ratio timed in interleaved rounds"
        if res.get("timing") == "interleaved"
        else "each row's runs timed one after another"
    )
    return (
        f"**Speed** on `{res['device_name']}` ({res['provenance']['device']}; ratios measured side by side in one "
        f"run of `jaxgd bench`, {timing_}, median of {res['config']['repeats']}; lower is faster unless the target "
        "says >=)."
    )


def notes(res, out) -> list[str]:
    """The ratios against their targets, the sections kept from earlier runs, where it ran, and the
    startup probes as a before/after table."""
    lines = ["Ratios:\n\n" + markdown_table(ratio_rows(res))] + kept_line(res) + [_bench_provenance(res)]
    return lines + ([_startup_table(res)] if res["sections"].get("startup") else [])


HEADLINE = {
    "jaxgd/torch bs256": "MLP epoch",
    "jaxgd/torch CNN": "CNN epoch",
    "best training loop / matmul peak": "best training loop",
    "cache_command wall s, empty cache": "`jaxgd reproduce --quick`, empty cache",
}


def headline(res, out) -> tuple[str, str]:
    ratios = {k: v for s in res["sections"].values() for k, v in s["ratios"].items()}
    parts = [
        f"{what}: "
        + (
            f"{ratios[k]:.0f} s"
            if k.startswith("cache_command")
            else f"{ratios[k]:.2f} of the matmul peak"
            if "peak" in k
            else f"{ratios[k]:.2f}x PyTorch's time"
        )
        for k, what in HEADLINE.items()
        if k in ratios
    ]
    torch = res.get("torch") or {}
    return "; ".join(parts), f"PyTorch {torch.get('version', '')} (eager) on the same device"


def kept_line(r) -> list[str]:
    """The sections a bench kept from an earlier run (``--keep``), with that run's commit, CPU and date."""
    runs: dict[tuple, list[str]] = {}
    for name, p in (r.get("reused") or {}).items():
        runs.setdefault((p.get("commit"), p.get("cpu_model") or p.get("device"), p.get("date")), []).append(name)
    return [
        f"Kept from an earlier run (not rerun by the run below): {', '.join(names)} (commit {c}, {where}, {date})."
        for (c, where, date), names in runs.items()
    ]


def _bench_provenance(r) -> str:
    """Where a bench ran: the code (commit, fingerprint), the versions and the float32 precision."""
    p, prec, t = r["provenance"], r.get("precision"), r.get("torch") or {}
    code = (
        f"commit {p['commit']}"
        + (" with uncommitted changes" if p.get("uncommitted_changes") else "")
        + f", code fingerprint `{p.get('code_fingerprint')}`"
    )
    line = (
        f"<sub>{code}; jax {p['versions']['jax']}"
        + (f", PyTorch {t['version']} on {t.get('device', 'cpu')}" if t else "")
        + (f", flax {r['flax']['flax']} with optax {r['flax']['optax']}" if r.get("flax") else "")
        + f", {p['date']}"
    )
    peak = r["sections"].get("matmul", {"rows": [{}]})["rows"][0].get("gflops")
    if peak:
        where = (
            f"{p.get('cpu_model')}, {p.get('cpu_count')} cores" if r["device_name"].startswith("cpu") else p["device"]
        )
        line += (
            "; matmul peak " + (f"{peak / 1e3:.0f} TFLOP/s" if peak >= 1e4 else f"{peak:.0f} GFLOP/s") + f" ({where})"
        )
    if prec and (prec["tf32_matmul"] or prec["tf32_conv"]):
        line += (
            f"; float32 matmuls and convolutions ran in TF32, XLA's default on this GPU (relative error "
            f"{prec['float32_matmul_rel_error']:.0e} against float64), and PyTorch was set to TF32 alike"
        )
    return line + ".</sub>"


def _startup_table(r) -> str:
    """The startup section as a before/after table: each probe's seconds, programs compiled and
    peak memory in a fresh process with an empty compilation cache (and with a warm one), for this
    run's code and, where measured, the baseline tree's (``bench --startup-baseline``)."""
    rows = _startup_rows(r)
    if not rows:
        return ""
    return (
        "**Startup** (`jaxgd bench --sections startup`): each probe in a fresh process, with an empty "
        "compilation cache and then with the cache the first filled; seconds of the probe itself (after the "
        "interpreter started), programs compiled (or loaded from the cache), the same check called again in the "
        "same process, and the process's peak memory; `jaxgd reproduce --quick` is the bench's compile_cache "
        "section, its seconds the whole command's wall time:\n\n" + markdown_table(rows)
    )


def startup_before_after(r) -> list[dict]:
    """The startup table in short, for the README: a row per probe and cache, the baseline's
    seconds and programs beside this code's, each with its commit."""
    cells: dict = {}
    for row in _startup_rows(r):
        code = row["code"].removeprefix("baseline ") if row["code"].startswith("baseline") else row["code"][6:-1]
        secs = f"{row['seconds']:.0f}" if row["seconds"] >= 100 else f"{row['seconds']:.3g}"
        cell = (
            f"{secs} s, {row['programs compiled']} programs"
            + (f", {row['peak RSS MB']} MB" if row["peak RSS MB"] != "" else "")
            + f" ({code})"
        )
        key = (
            f"`{row['probe']}`"
            if row["probe"].startswith("jaxgd")
            else f"`jaxgd.{row['probe']}`"
            if row["probe"].startswith("check")
            else row["probe"],
            row["cache"],
        )
        cells.setdefault(key, {})["before" if row["code"].startswith("baseline") else "now"] = cell
    return [
        {
            "start-up, a fresh process": probe,
            "compilation cache": cache,
            "before": c.get("before", "-"),
            "now": c.get("now", "-"),
        }
        for (probe, cache), c in cells.items()
    ]


def _startup_rows(r) -> list[dict]:
    sec = r["sections"].get("startup")
    if not sec:
        return []

    def commit(section):  # a section kept from an earlier run (bench --keep) has that run's commit
        return (r.get("reused") or {}).get(section, r["provenance"]).get("commit")

    rows = []
    for row in sec["rows"]:
        probe, rest = row["name"].split(", a fresh process, ")
        state, _, base = rest.partition(" [baseline ")
        rows.append(
            {
                "probe": probe,
                "cache": state.replace(" cache", ""),
                "code": f"baseline {base.rstrip(']')}" if base else f"this ({commit('startup')})",
                "seconds": row["median_s"],
                "programs compiled": row.get("first_programs", 0),
                "second call s": row.get("second_s", ""),
                "peak RSS MB": round(row["peak_rss_mb"]),
            }
        )
    for sec_name, code in (("compile_cache", None), ("compile_cache", "before")):  # the quick profile's whole run
        cc = r["sections"].get(sec_name)
        cc = cc and (cc.get(code) if code else cc)
        for row in (cc or {}).get("rows", []):
            command, state = row["name"].split(", a fresh process, ")
            rows.append(
                {
                    "probe": command,
                    "cache": state.split(" cache")[0],
                    "code": (
                        f"baseline {cc['commit']}"
                        + (
                            f" ({cc['cpu_model']})"
                            if cc.get("cpu_model") not in (None, r["provenance"].get("cpu_model"))
                            else ""
                        )
                    )
                    if code
                    else f"this ({commit('compile_cache')})",
                    "seconds": row["wall_s"],
                    "programs compiled": row["programs"],
                    "second call s": "",
                    "peak RSS MB": round(row["peak_rss_mb"]) if row.get("peak_rss_mb") else "",
                }
            )
    rows.sort(key=lambda x: (x["probe"], x["cache"], not x["code"].startswith("baseline")))
    return rows


EXPERIMENT = Experiment(
    name="bench",
    what="speed, side by side in one run: jaxgd vs PyTorch, hand vs jax.grad, of matmul peak",
    run=run,
    config=BenchConfig,
    results="bench/{device}.json",
    summary=summary,
    quick={
        "repeats": 2,
        "sections": ("matmul", "mlp_epoch"),
        "batch_sizes": (256,),
        "n_mlp": 3000,
        "n_cnn": 1536,
        "cnn_variants": False,
        "eager": False,
        "torch_compile": False,
    },
    figures=("bench/{device}.png",),
    notes=notes,
    about=about,
    headline=headline,
)
