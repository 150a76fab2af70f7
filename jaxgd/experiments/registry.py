"""The experiments ``jaxgd reproduce`` knows: each one's module, results file, configs per profile,
figures and datasets, and where a profile's results live. Both the running (``reproduce``) and the
reporting (``writeup``) read this table, and nothing else about the experiments.
"""
from __future__ import annotations

from pathlib import Path

from jaxgd.experiments import (airbench, bench, cifar2, cifar2_improved, cifar10_improved, cifar10_softmax, common,
                               data_report, gradcheck, matrix_chain, mnist_improved, mnist_zoo, resnet)
from jaxgd.experiments.config import ConfigError

# name -> (module, results file, quick config, full config, figures); a quick config of None: full profile only
EXPERIMENTS = {
    "gradcheck": (gradcheck, "gradcheck/results.json", {"quick": True}, {}, []),
    "matrix_chain": (matrix_chain, "matrix_chain/results.json", {"iters": 200}, {}, ["matrix_chain/loss_curves.png"]),
    "data_report": (data_report, "data/cifar2.json", {"datasets": ("cifar2", "mnist")}, {},
                    ["data/cifar2_samples.png", "data/mnist_samples.png"]),
    "cifar2": (cifar2, "cifar2/results.json", {"grid": cifar2.QUICK_GRID, "epochs": 3}, {},
               ["cifar2/curves.png", "cifar2/hand_vs_optax.png", "cifar2/confusion_test.png",
                "cifar2/misclassified_test.png"]),
    "cifar2_improved": (cifar2_improved, "cifar2_improved/results.json",
                        {"epochs": 4, "lrs": (0.01, 0.02), "seeds": (0, 1)}, {}, ["cifar2_improved/seed_curves.png"]),
    "mnist_zoo": (mnist_zoo, "mnist/results.json", {"epochs": 2, "train_size": 3000}, {},
                  ["mnist/variant_plain.png", "mnist/family_cnn.png", "mnist/hand_vs_autodiff.png"]),
    "mnist_improved": (mnist_improved, "mnist_improved/results.json",
                       {"softmax_epochs": 2, "mlp_epochs": 2, "cnn_epochs": 1, "train_size": 4000, "seeds": (0, 1)},
                       {}, ["mnist_improved/test_acc.png"]),
    "cifar10_softmax": (cifar10_softmax, "cifar10_softmax/results.json",
                        {"settings": ["A", "B", "C", "D"], "epochs": 3}, {},
                        ["cifar10_softmax/curves_B.png", "cifar10_softmax/templates_B.png"]),
    "cifar10_improved": (cifar10_improved, "cifar10_improved/results.json",
                         {"epochs": 3, "lrs": (0.003,), "weight_decays": (1e-4,)}, {}, ["cifar10_improved/templates.png"]),
    "resnet": (resnet, "resnet/results.json",
               {"cifar2_epochs": 1, "cifar10_epochs": 1, "cifar2_seeds": (0, 1), "train_size": 1024}, {},
               ["resnet/curves.png"]),
    "airbench": (airbench, "airbench/results.json", None, {}, ["airbench/curves.png"]),  # hours on a CPU: not in the quick profile
    "bench": (bench, "bench/{device}.json",
              {"repeats": 2, "sections": ("matmul", "mlp_epoch"), "batch_sizes": (256,),
               "n_mlp": 3000, "n_cnn": 1536, "cnn_variants": False, "eager": False, "torch_compile": False}, {},
              ["bench/{device}.png"]),
}


# the datasets an experiment reads (checked before anything runs)
NEEDS = {"data_report": ("cifar2", "mnist"), "cifar2": ("cifar2",), "cifar2_improved": ("cifar2",),
         "mnist_zoo": ("mnist",), "mnist_improved": ("mnist",),
         "cifar10_softmax": ("cifar10",), "cifar10_improved": ("cifar10",), "resnet": ("cifar2", "cifar10"),
         "airbench": ("cifar10", "cifar2")}


def files(name):
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
    if profile == "quick" and quick is None:
        raise ConfigError(f"{name} runs in the full profile only: jaxgd reproduce --full --only {name}, "
                          f"or jaxgd {name.replace('_', '-')}")
    extra = {"data_dir": data_dir} if data_dir and name in NEEDS else {}
    return mod.CONFIG.make(quick if profile == "quick" else full, **extra)


def in_profile(name, profile) -> bool:
    """Whether ``jaxgd reproduce`` runs ``name`` in ``profile`` when not told which to run."""
    return profile == "full" or EXPERIMENTS[name][2] is not None
