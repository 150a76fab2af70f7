"""Run every experiment and write results/REPORT.md (the engine behind ``jaxgd reproduce``).

Profiles: ``full`` (the course reports' protocols; results/) and ``quick`` (fewer epochs and
configs, a few minutes on a 2-core CPU; results/quick/, labelled quick).
"""
from __future__ import annotations

import inspect
import time
import traceback
from pathlib import Path

import numpy as np

from jaxgd import data, models, parallel, progress
from jaxgd._files import atomic_write
from jaxgd.experiments import (bench, cifar2, cifar2_improved, cifar10_improved, cifar10_softmax, common,
                               data_report, gradcheck, matrix_chain, mnist_improved, mnist_zoo, resnet)
from jaxgd.report import markdown_table

# name -> (module, results file, quick config, full config, figures)
EXPERIMENTS = {
    "gradcheck": (gradcheck, "gradcheck/results.json", {"quick": True}, {}, []),
    "matrix_chain": (matrix_chain, "matrix_chain/results.json", {"iters": 200}, {}, ["matrix_chain/loss_curves.png"]),
    "data_report": (data_report, "data/cifar2.json", {"datasets": ("cifar2", "mnist")}, {},
                    ["data/cifar2_samples.png", "data/mnist_samples.png"]),
    "cifar2": (cifar2, "cifar2/results.json", {"grid": cifar2.QUICK_GRID, "epochs": 5}, {},
               ["cifar2/curves.png", "cifar2/hand_vs_optax.png", "cifar2/confusion_test.png",
                "cifar2/misclassified_test.png"]),
    "cifar2_improved": (cifar2_improved, "cifar2_improved/results.json",
                        {"epochs": 10, "lrs": (0.01, 0.02), "seeds": (0, 1)}, {}, ["cifar2_improved/seed_curves.png"]),
    "mnist_zoo": (mnist_zoo, "mnist/results.json", {"epochs": 2, "train_size": 6000}, {},
                  ["mnist/variant_plain.png", "mnist/family_cnn.png", "mnist/hand_vs_autodiff.png"]),
    "mnist_improved": (mnist_improved, "mnist_improved/results.json",
                       {"softmax_epochs": 2, "mlp_epochs": 2, "cnn_epochs": 1, "train_size": 4000, "seeds": (0, 1)},
                       {}, ["mnist_improved/test_acc.png"]),
    "cifar10_softmax": (cifar10_softmax, "cifar10_softmax/results.json",
                        {"settings": ["A", "B", "C", "D"], "epochs": 10}, {},
                        ["cifar10_softmax/curves_B.png", "cifar10_softmax/templates_B.png"]),
    "cifar10_improved": (cifar10_improved, "cifar10_improved/results.json",
                         {"epochs": 3, "lrs": (0.003,), "weight_decays": (1e-4,)}, {}, ["cifar10_improved/templates.png"]),
    "resnet": (resnet, "resnet/results.json",
               {"cifar2_epochs": 1, "cifar10_epochs": 1, "cifar2_seeds": (0, 1), "train_size": 1024}, {},
               ["resnet/curves.png"]),
    "bench": (bench, "bench/{device}.json",
              {"repeats": 5, "sections": ("matmul", "mlp_epoch", "cnn_epoch"), "batch_sizes": (256,),
               "n_mlp": 3000, "n_cnn": 1536, "cnn_variants": False}, {},
              ["bench/{device}.png"]),
}


# the datasets an experiment reads (checked before anything runs)
NEEDS = {"data_report": ("cifar2", "mnist"), "cifar2": ("cifar2",), "cifar2_improved": ("cifar2",),
         "mnist_zoo": ("mnist",), "mnist_improved": ("mnist",),
         "cifar10_softmax": ("cifar10",), "cifar10_improved": ("cifar10",), "resnet": ("cifar2", "cifar10")}
SEEDS_SAY = {
    "gradcheck": "INF265 project 1: relative error < 1e-6 against finite differences",
    "cifar2": "the INF265 project 1 reports: best test accuracy 0.855 / 0.8405 / 0.848",
    "cifar2_improved": "the INF265 project 1 reports: best test accuracy 0.855 / 0.8405 / 0.848 (one run each, "
                       "their protocol); this protocol's target: 0.89 as the mean over >= 3 seeds",
    "cifar10_softmax": "report: A 28.33%, B 34.73%, C 31.88%, D 26.76% test accuracy",
    "cifar10_improved": "DD2424's best setting: 34.73% test accuracy (B, 10,000 training images); this protocol's "
                        "target: 0.42",
    "mnist_improved": "the CSI 5340 homework 2 protocol's results in `mnist_zoo` above (one seed, last epoch); "
                      "this protocol's targets: every CNN >= 0.994 and every MLP >= 0.985 as the mean over >= 3 seeds",
    "resnet": "the CIFAR-2 MLP of INF265 project 1 (`cifar2_improved` above) and DD2424's linear softmax on "
              "CIFAR-10 (`cifar10_improved`), the other models trained here on these images; a target of >= 0.93 on "
              "CIFAR-10 is for a run on a GPU",
    "mnist_zoo": "the CSI 5340 homework 2 targets: softmax >= 92%, MLP >= 98%, CNN >= 99.2% test accuracy after 30 epochs",
}


def run_one(name, cfg, out=None, force=False, verbose=True, log=print):
    """Run experiment ``name`` with its typed ``cfg``, passing ``force``, ``verbose`` and ``log``
    to its ``run`` where it takes them (only the resumable ones take ``force``)."""
    run = EXPERIMENTS[name][0].run
    takes = inspect.signature(run).parameters
    return run(cfg, out=out, **{k: v for k, v in (("force", force), ("verbose", verbose), ("log", log)) if k in takes})


def resumable(name) -> bool:
    """Whether the experiment keeps finished configs/models in a partial file (its run takes ``force``)."""
    return "force" in inspect.signature(EXPERIMENTS[name][0].run).parameters


def _files(name):
    """The results file and figures of an experiment (bench's are named after the device)."""
    _, rfile, _, _, figs = EXPERIMENTS[name]
    dev = bench.device_name()
    return rfile.format(device=dev), [f.format(device=dev) for f in figs]


def root(profile, base=None) -> Path:
    base = common.results_root(base)
    return base / "quick" if profile == "quick" else base


def config(name, profile, data_dir=None):
    """The typed config an experiment runs with in ``profile``."""
    mod, _, quick, full, _ = EXPERIMENTS[name]
    extra = {"data_dir": data_dir} if data_dir and name in NEEDS else {}
    return mod.CONFIG.make(quick if profile == "quick" else full, **extra)


def run_all(profile="quick", only=None, force=False, base=None, data_dir=None, log=print, quiet=False) -> dict:
    """Run the experiments (all, or ``only``) of ``profile`` into ``root(profile, base)`` and write
    its REPORT.md (and, for the full profile in the default place, the README's results block).
    A finished experiment (a readable results file) is skipped unless ``force``; a corrupt one is
    set aside and rerun. Progress bars show unless ``quiet`` (see ``jaxgd.progress``). Every config is built, and every dataset found (or found downloadable),
    before anything runs: a bad config or missing data fails in seconds, not after an hour."""
    if profile not in ("quick", "full"):
        raise ValueError(f"profile must be 'quick' or 'full', got {profile!r}")
    names = list(EXPERIMENTS) if not only else list(only)
    for n in names:
        if n not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {n!r}; choose from {list(EXPERIMENTS)}")
    out = root(profile, base)
    todo = {}
    status = {}
    finished = [n for n in names if not force and parallel.is_writer()
                and common.read_result(out / _files(n)[0], log) is not None]
    finished = parallel.broadcast_json(finished)  # every process of a multi-host run decides alike
    for n in names:
        if n in finished:
            log(f"[{n}] done already ({out / _files(n)[0]}); --force reruns it")
            status[n] = "skipped (done)"
        else:
            todo[n] = config(n, profile, data_dir)
    for ds in dict.fromkeys(d for n, cfg in todo.items() for d in NEEDS.get(n, ())
                            if not hasattr(cfg, "datasets") or d in cfg.datasets):
        data.check_available(ds, data_dir)
    for n, cfg in progress.bar(todo.items(), f"reproduce --{profile}", quiet=quiet, unit="experiment"):
        log(f"[{n}] running ({profile})")
        t = time.time()
        try:
            run_one(n, cfg, out, force, not quiet, log)
            status[n] = f"ok ({time.time() - t:.0f} s)"
        except Exception as e:  # one failing experiment must not stop the others
            traceback.print_exc()
            status[n] = f"FAILED: {type(e).__name__}: {e}"
        log(f"[{n}] {status[n]}")
    if parallel.is_writer():
        write_report(profile, base)
        readme = out.parent / "README.md"
        if profile == "full" and readme.exists() and "<!-- results:start -->" in readme.read_text():
            update_readme(readme, base)
    return status


def write_report(profile="full", base=None) -> Path:
    """``REPORT.md`` of ``profile`` from the JSON files beside it (written atomically); a file that
    cannot be read is named in its section instead of stopping the report."""
    out = root(profile, base)
    lines = [f"# jaxgd results{' (QUICK profile: fewer epochs and configs)' if profile == 'quick' else ''}", "",
             "Generated by `jaxgd reproduce` from the JSON files beside this report.", ""]
    for n in EXPERIMENTS:
        path = out / _files(n)[0]
        lines += [f"## {n}", ""]
        if not path.exists():
            lines += ["(not run yet)", ""]
            continue
        try:
            lines += _report_section(n, out, common.load_json(path))
        except Exception as e:  # a corrupt or hand-edited file: say which, and go on
            lines += [f"(could not read {path}: {type(e).__name__}: {e}; rerun with --only {n} --force)", ""]
    return atomic_write(out / "REPORT.md", "\n".join(lines))


def _report_section(n, out, res) -> list[str]:
    mod = EXPERIMENTS[n][0]
    figs = _files(n)[1]
    if n == "data_report":
        rows = [r for ds in ("cifar2", "mnist", "cifar10") if (out / f"data/{ds}.json").exists()
                for r in mod.summary(common.load_json(out / f"data/{ds}.json"))]
    else:
        rows = mod.summary(res)
    lines = [markdown_table(rows), ""]
    if n in SEEDS_SAY:
        lines += [f"For comparison, {SEEDS_SAY[n]}.", ""]
    if n == "bench":
        lines += [f"Device `{res['device_name']}`; ratios (lower is faster unless the target says >=):", "",
                  markdown_table(mod.ratio_rows(res)), ""]
    if n == "mnist_zoo":
        lines += [f"Note: {res['note']}.", ""]
    if n == "cifar2":
        b = res["best"]
        lines += [f"Best by validation accuracy: **{b['label']}**: train {b['train_acc']:.4f}, "
                  f"val {b['val_acc']:.4f}, **test {b['test_acc']:.4f}**; hand vs optax loss curves differ "
                  f"by at most {res['hand_vs_optax']['max_abs_loss_curve_diff']:.1e}.", ""]
    if res.get("reused"):
        lines += [_reused_line(res["reused"]), ""]
    lines += [f"![{f}]({f})" for f in figs if (out / f).exists()] + [""]
    p = res.get("provenance", {})
    lines += [f"<sub>commit {p.get('commit')}, {p.get('device')}, jax {p.get('versions', {}).get('jax')}, "
              f"{p.get('date')}, wall time {res.get('wall_time_s', 0):.0f} s, config "
              f"`{ {k: v for k, v in res.get('config', {}).items() if k != 'grid'} }`</sub>", ""]
    return lines


def _readme_resnet(r, out) -> str:
    """The ResNet's README part: its table, beside the MLP and the linear softmax on the same images."""
    c = r["config"]
    others = []
    if (out / "cifar2_improved/results.json").exists():
        o = common.load_json(out / "cifar2_improved/results.json")
        others.append(f"the INF265 CIFAR-2 MLP, improved protocol: {o['test_acc_mean']:.4f} +- {o['test_acc_std']:.4f}")
    if (out / "cifar10_improved/results.json").exists():
        o = common.load_json(out / "cifar10_improved/results.json")
        acc = o["chosen"].get("test_acc") if isinstance(o.get("chosen"), dict) else None
        if acc is not None:
            others.append(f"DD2424's linear softmax on CIFAR-10, improved: {acc:.4f}")
    hours = sum(d["train_time_s"] for d in r["datasets"].values()) / 3600
    depth = models.resnet_depth(c["widths"], c["blocks"])
    return (f"**A residual network, every gradient by hand** (`jaxgd resnet`; `models.resnet`: ResNet-"
            f"{depth}, widths {list(c['widths'])}, {c['blocks']} block(s) per stage, 3x3 convs, batch "
            f"norm, identity and 1x1 stride-2 projection shortcuts, global average pooling, He et al. (2016)'s CIFAR "
            f"shape; its gradient is the hand reverse pass through `layers.residual`, compared with `jax.grad` in "
            f"float64 on real images before training; recipe fixed in advance, no search: Nesterov SGD lr "
            f"{c['lr']:g}, momentum {c['momentum']:g}, weight decay {c['weight_decay']:g} on the weights, warm-up "
            f"then cosine, flips and {c['pad']}-pixel crops, batch {c['batch_size']}, each run's best epoch by "
            f"validation accuracy, test read once per seed; {hours:.1f} h of training on the 2-core CPU, shared "
            "part of the time with other runs. A target of >= 0.93 on CIFAR-10 needs a longer run, on a GPU):\n\n"
            + markdown_table(resnet.summary(r))
            + (f"\n\nOn the same test images: {'; '.join(others)}." if others else "")
            + "\n\n![ResNet curves](results/resnet/curves.png)")


def _reused_line(reused: dict) -> str:
    runs = {}
    for name, p in reused.items():
        runs.setdefault((p or {}).get("commit"), []).append((name, (p or {}).get("date")))
    return ("Reused from earlier runs (not recomputed by the run dated below): " + "; ".join(
        f"{', '.join(n for n, _ in items)} (commit {c}, {min(str(d) for _, d in items)})" for c, items in runs.items()) + ".")


def readme_results(base=None) -> str:
    """The README's results section, generated from the full profile's JSON files."""
    out = root("full", base)
    parts = []
    f = out / "gradcheck/results.json"
    if f.exists():
        r = common.load_json(f)
        worst = {dt: max(c["fd_max"] for c in r["checks"] if c["dtype"] == dt) for dt in ("float64",)}
        auto = {dt: max(c["autodiff_max"] for c in r["checks"] if c["dtype"] == dt) for dt in ("float64", "float32")}
        parts.append(
            f"**Gradient checks** ({len(r['checks'])} checks: every layer's backward, the generic reverse pass of the "
            "nine MNIST models, the CIFAR ResNet-8 and the CIFAR-2 MLP, INF265's MLP recursion, DD2424's closed "
            f"form and the matrix chain, each in float64 and float32; all passed: {r['all_passed']}): the largest "
            f"float64 relative error against finite differences is {worst['float64']:.1e} (INF265 project 1's bar: 1e-6). "
            f"Against `jax.grad` it is {auto['float64']:.1e} in float64 and {auto['float32']:.1e} in float32.")
    f = out / "matrix_chain/results.json"
    if f.exists():
        r = common.load_json(f)
        parts.append(f"**Matrix chain**: gradient descent with hand gradients and with `jax.grad`, "
                     f"K in {[x['K'] for x in r['runs']]}; the loss curves differ by at most "
                     f"{r['max_abs_loss_diff']:.1e}.\n\n![matrix chain](results/matrix_chain/loss_curves.png)")
    f = out / "cifar2/results.json"
    if f.exists():
        r = common.load_json(f)
        b = r["best"]
        c = r["config"]
        parts.append(
            f"**CIFAR-2 MLP** (3072-512-128-32-2, {r['n_params']:,} parameters, hand backprop + hand SGD, "
            f"{len(r['grid'])} configs, {c['epochs']} epochs, batch {c['batch_size']}):\n\n"
            + markdown_table([{"best config (by val acc)": b["label"], "train acc": b["train_acc"],
                               "val acc": b["val_acc"], "test acc": b["test_acc"],
                               "INF265 reports' test acc": "0.855 / 0.8405 / 0.848"}])
            + f"\n\nThe hand-written update with hand backprop and the `jax.grad` + optax twin give loss curves "
              f"that differ by at most {r['hand_vs_optax']['max_abs_loss_curve_diff']:.1e}.\n\n"
              "![curves](results/cifar2/curves.png)\n![hand vs optax](results/cifar2/hand_vs_optax.png)\n"
              "![confusion](results/cifar2/confusion_test.png)")
    f = out / "cifar2_improved/results.json"
    if f.exists():
        r = common.load_json(f)
        c = r["config"]
        base = common.load_json(out / "cifar2/results.json") if (out / "cifar2/results.json").exists() else None
        rows = [{"protocol": "INF265 reports (one run each)", "test acc": r["reports_test_acc"]}]
        if base is not None:
            rows.append({"protocol": f"the reports' protocol here (best of {len(base['grid'])} configs by val, seed "
                                     f"{base['config']['seed']})", "test acc": base["best"]["test_acc"]})
        each = ", ".join(f"{x['test_acc']:.4f}" for x in r["runs"])
        rows.append({"protocol": f"improved (lr {r['choice']['chosen_lr']:g} by val; mean +- std over "
                                 f"{len(r['runs'])} seeds)",
                     "test acc": f"{r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f} ({each})"})
        parts.append(
            f"**CIFAR-2, improved protocol** (the same MLP; what changed: random flips and {c['pad']}-pixel crops on the "
            f"device, Nesterov momentum {c['momentum']:g}, weight decay {c['weight_decay']:g} on the weights only, a "
            f"linear warm-up then a cosine to 0, {c['epochs']} epochs, each run's best epoch by validation accuracy; "
            f"the learning rate chosen among {c['lrs']} on validation at seed 0; each seed changes the split, the "
            f"initial weights, the batch order and the augmentation; test read once per seed; target "
            f">= {r['target']} as the mean):\n\n" + markdown_table(rows)
            + _first_run(out / "cifar2_improved/first_run.json")
            + "\n\n![improved protocol](results/cifar2_improved/seed_curves.png)")
    f = out / "cifar10_softmax/results.json"
    if f.exists():
        r = common.load_json(f)
        parts.append("**CIFAR-10 linear softmax** (DD2424: 10,000 train / 10,000 val / 10,000 test, "
                      f"n_batch {r['config']['n_batch']}, {r['config']['epochs']} epochs):\n\n"
                      + markdown_table(cifar10_softmax.summary(r))
                      + "\n\n![templates](results/cifar10_softmax/templates_B.png)")
    f = out / "cifar10_improved/results.json"
    if f.exists():
        r = common.load_json(f)
        c, ch = r["config"], r["chosen"]
        parts.append(
            f"**CIFAR-10, the best linear softmax here** (still `softmax(Wx + b)` on the pixels, hand gradient; what "
            f"changed from DD2424: {r['data']['sizes']['train']:,} training / {r['data']['sizes']['val']:,} validation "
            f"images, random horizontal flips, Nesterov momentum, weight decay on W only, warm-up + cosine, "
            f"{c['epochs']} epochs, the best epoch by validation; lr x weight decay chosen on validation; one seed): "
            f"lr {ch['lr']:g}, weight decay {ch['weight_decay']:g}, best epoch {ch['best_epoch']}: validation "
            f"{ch['val_acc']:.4f}, **test {ch['test_acc']:.4f}** (target {r['target']}; DD2424's best, setting B: "
            f"{r['report_test_acc_percent']['B'] / 100:.4f}).")
    f = out / "mnist/results.json"
    if f.exists():
        r = common.load_json(f)
        c = r["config"]
        rows = [{k: v for k, v in row.items() if k != "s/epoch"} for row in mnist_zoo.summary(r)]
        parts.append(f"**MNIST model zoo** (CSI 5340 homework 2; 60,000 train / 10,000 test, {c['epochs']} epochs, "
                     f"batch {c['batch_size']}, hand SGD lr {c['lr']:g} momentum {c['momentum']:g} weight decay "
                     f"{c['weight_decay']:g}, one setting for all nine, gradients: {c.get('grads', 'autodiff')}; "
                     "architectures in `jaxgd.models.mnist_zoo`):\n\n"
                     + markdown_table(rows) + _zoo_hand_vs_autodiff(r)
                     + "\n\n![plain models](results/mnist/variant_plain.png)\n![CNN variants](results/mnist/family_cnn.png)"
                     + ("\n![hand vs jax.grad](results/mnist/hand_vs_autodiff.png)"
                        if (out / "mnist/hand_vs_autodiff.png").exists() else ""))
    f = out / "mnist_improved/results.json"
    if f.exists():
        r = common.load_json(f)
        c = r["config"]
        zoo = common.load_json(out / "mnist/results.json")["models"] if (out / "mnist/results.json").exists() else {}
        rows = [{"model": n, "epochs": m["epochs"],
                 "CSI 5340 protocol here (1 seed, last epoch)": zoo[n]["final_test_acc"] if n in zoo else "",
                 f"improved: test acc, mean +- std over {len(m['runs'])} seeds":
                     f"{m['test_acc_mean']:.4f} +- {m['test_acc_std']:.4f}",
                 "per seed": ", ".join(f"{x['test_acc']:.4f}" for x in m["runs"]),
                 "target": m["target"] if m["target"] is not None else "",
                 "met": "" if m["target"] is None else ("yes" if m["test_acc_mean"] >= m["target"] else "**no**")}
                for n, m in r["models"].items()]
        parts.append(
            f"**MNIST, improved protocol** (the same nine models, `jaxgd mnist-improved`; what changed: "
            f"{c['val_size']:,} of the 60,000 training images held out for validation, random shifts of up to "
            f"{c['shift']} pixels on the device, Nesterov momentum {c['momentum']:g}, weight decay {c['weight_decay']:g} "
            f"on the weights only, lr {c['lr']:g} with a linear warm-up then a cosine to 0, each run's best epoch by "
            "validation accuracy; settings fixed in advance, no search; each seed changes the split, the initial "
            "weights, the batch order, the dropout masks and the shifts; test read once per seed; targets: every "
            "CNN >= 0.994 and every MLP >= 0.985 as the mean):\n\n" + markdown_table(rows) + _missed(r) + _linear_shifted(r, zoo)
            + "\n\n![improved protocol](results/mnist_improved/test_acc.png)")
    f = out / "resnet/results.json"
    if f.exists():
        parts.append(_readme_resnet(common.load_json(f), out))
    benches = sorted((out / "bench").glob("*.json")) if (out / "bench").exists() else []
    for f in benches:
        r = common.load_json(f)
        timing = ("the rows of each ratio timed in interleaved rounds" if r.get("timing") == "interleaved"
                  else "each row's runs timed one after another")
        parts.append(f"**Speed** on `{r['device_name']}` ({r['provenance']['device']}; ratios measured side by side "
                     f"in one run of `jaxgd bench`, {timing}, median of {r['config']['repeats']}; lower is faster "
                     "unless the target says >=):\n\n" + markdown_table(bench.ratio_rows(r)) + _bench_provenance(r)
                     + f"\n\n![bench](results/bench/{f.stem}.png)")
    return "\n\n".join(parts)


def _bench_provenance(r) -> str:
    """Where a bench ran: the code (commit, fingerprint), the versions and the float32 precision."""
    p, prec, t = r["provenance"], r.get("precision"), r.get("torch") or {}
    code = (f"commit {p['commit']}" + (" with uncommitted changes" if p.get("uncommitted_changes") else "")
            + f", code fingerprint `{p.get('code_fingerprint')}`")
    line = (f"\n\n<sub>{code}; jax {p['versions']['jax']}"
            + (f", PyTorch {t['version']} on {t.get('device', 'cpu')}" if t else "") + f", {p['date']}")
    peak = r["sections"].get("matmul", {"rows": [{}]})["rows"][0].get("gflops")
    if peak:
        where = f"{p.get('cpu_model')}, {p.get('cpu_count')} cores" if r["device_name"].startswith("cpu") else p["device"]
        line += "; matmul peak " + (f"{peak / 1e3:.0f} TFLOP/s" if peak >= 1e4 else f"{peak:.0f} GFLOP/s") + f" ({where})"
    if prec and (prec["tf32_matmul"] or prec["tf32_conv"]):
        line += (f"; float32 matmuls and convolutions ran in TF32, XLA's default on this GPU (relative error "
                 f"{prec['float32_matmul_rel_error']:.0e} against float64), and PyTorch was set to TF32 alike")
    return line + ".</sub>"


def _first_run(path) -> str:
    """The improved protocol's first run (kept with its own provenance, since its test accuracy was read)."""
    if not path.exists():
        return ""
    r = common.load_json(path)
    c = r["config"]
    return (f"\n\nThe protocol's first run ({c['epochs']} epochs, lrs {c['lrs']}; commit {r['provenance']['commit']}; "
            f"`results/cifar2_improved/first_run.json`) chose lr {r['choice']['chosen_lr']:g} and reached test "
            f"{r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f}. Its validation accuracy was still rising at the last "
            "epochs and best at the largest lr, so the protocol grew to the epochs and lrs above.")


def _missed(r) -> str:
    """For each model under its target: its validation accuracy and last training loss beside its family's."""
    mean = lambda m, f: float(np.mean([f(x) for x in m["runs"]]))  # noqa: E731
    val, loss = (lambda x: x["val_acc"]), (lambda x: x["train_loss_curve"][-1])
    out = []
    for n, m in r["models"].items():
        if m["target"] is None or m["test_acc_mean"] >= m["target"]:
            continue
        rest = {k: o for k, o in r["models"].items() if o["family"] == m["family"] and k != n}
        out.append(f"{n} misses its target by {m['target'] - m['test_acc_mean']:.4f}. Validation said so before the "
                   f"test set was read: {mean(m, val):.4f} at its best epochs ("
                   + ", ".join(f"{k} {mean(o, val):.4f}" for k, o in rest.items())
                   + f"), and its training loss (the last epoch's running mean, in training mode) is {mean(m, loss):.3f} ("
                   + ", ".join(f"{k} {mean(o, loss):.3f}" for k, o in rest.items())
                   + "): with these settings it under-fits.")
    return "".join(f"\n\n{line}" for line in out)


def _linear_shifted(r, zoo) -> str:
    """Say so where the improved settings lowered softmax regression's accuracy."""
    worse = [n for n, m in r["models"].items() if m["family"] == "softmax" and n in zoo
             and m["test_acc_mean"] < zoo[n]["final_test_acc"]]
    if not worse:
        return ""
    return (f"\n\nSoftmax regression has no target here and does worse under these settings than under CSI 5340's "
            f"({', '.join(worse)}), most likely because of the shifts: a shift moves a digit's pixels, which a model "
            "linear in the pixels cannot undo (crops lowered the CIFAR-10 linear softmax's validation accuracy too). The shifts are for the "
            "MLPs and CNNs; the CSI 5340 protocol's numbers stay softmax regression's best here.")


def _zoo_hand_vs_autodiff(r) -> str:
    gaps = {n: m["hand_vs_autodiff_epoch"]["max_abs_diff"] for n, m in r["models"].items()
            if m.get("hand_vs_autodiff_epoch")}
    if not gaps:
        return ""
    same = [n for n, g in gaps.items() if g == 0.0]
    worst = max(gaps, key=gaps.get)
    return (f"\n\nOne epoch from the same init, batches and dropout masks, with hand gradients and with `jax.grad` "
            f"(float32): the per-step loss curves are bit-identical for {', '.join(same) or 'none'}; the largest gap "
            f"is {gaps[worst]:.1e} ({worst}). The CNN curves agree for the first steps and then drift apart: float32 "
            "rounding (the two compute a conv's backward in different orders) amplified by training. In float64 the "
            "two trainings of the dropout and batch-norm CNNs agree to 1e-12 "
            "(`tests/test_models.py::test_hand_and_autodiff_training_agree_in_float64`).")


def update_readme(readme="README.md", base=None) -> bool:
    """Replace the README's results block; returns whether it changed."""
    path = Path(readme)
    text = path.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    i, j = text.index(start) + len(start), text.index(end)
    new = text[:i] + "\n" + readme_results(base) + "\n" + text[j:]
    if new != text:
        atomic_write(path, new)
    return new != text
