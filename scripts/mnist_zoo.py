"""MNIST model zoo: softmax regression, MLP and CNN, each plain / dropout / batch norm.

    python scripts/mnist_zoo.py [--epochs 30] [--models cnn/plain mlp/dropout ...] [--force]

Writes results/mnist/results.json, one accuracy figure per model, one per family and one
per variant. Finished models are kept in results/mnist/models_partial.json, so a stopped
run picks up where it was (``--force`` starts over).
"""
import argparse

from jaxgd.experiments import mnist_zoo as exp
from jaxgd.report import print_table

D = exp.DEFAULTS
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--epochs", type=int, default=D["epochs"])
p.add_argument("--batch-size", type=int, default=D["batch_size"])
p.add_argument("--lr", type=float, default=D["lr"])
p.add_argument("--momentum", type=float, default=D["momentum"])
p.add_argument("--weight-decay", type=float, default=D["weight_decay"])
p.add_argument("--models", nargs="+", default=D["models"], choices=exp.MODELS)
p.add_argument("--train-size", type=int, default=None, help="first N of the 60,000 training images")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--data-dir", default=None)
p.add_argument("--results", default=None, help="results root (default: ./results)")
p.add_argument("--force", action="store_true", help="retrain models already finished")
a = p.parse_args()
res = exp.run({"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "momentum": a.momentum,
               "weight_decay": a.weight_decay, "models": a.models, "train_size": a.train_size,
               "seed": a.seed, "data_dir": a.data_dir}, out=a.results, force=a.force)
print_table(exp.summary(res))
