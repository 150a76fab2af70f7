"""The bench's PyTorch peers: the same models, loops and SGD as jaxgd's, written as a PyTorch user
would (an optional extra: ``pip install -e '.[peers]'`` in the jaxgd checkout; nothing here is imported
without it).

``loop`` is PyTorch's usual epoch (shuffle, zero_grad, forward, cross_entropy, backward, SGD step),
``fit`` the same with ``fit``'s per-epoch validation, ``rows`` the bench rows of a loop,
``conv_parts`` the MNIST CNN's second convolution part by part. Each
runs beside JAX: on the CPU, or on CUDA when JAX is on a GPU (``device``), at the float32
precision JAX used (``precision_like``).
"""

from __future__ import annotations

import itertools
import time

import jax
import numpy as np


def available(want):
    """torch, if wanted, installed, and able to run on JAX's device (else the torch rows are left out)."""
    if not want:
        return None
    try:
        import torch
    except ImportError:
        return None
    if jax.default_backend() != "cpu" and not (jax.default_backend() == "gpu" and torch.cuda.is_available()):
        return None  # a CPU PyTorch loop against an accelerator would be no comparison
    return torch


def device():
    """Where the PyTorch reference runs: beside JAX (the CPU, or CUDA when JAX is on a GPU)."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def precision_like(torch, probe):
    """PyTorch on CUDA set to the float32 precision JAX used (TF32 or not) for matmuls and cuDNN
    convolutions, so that the loops compare at the same precision; returns what was set."""
    if device() != "cuda":
        return None
    torch.backends.cuda.matmul.allow_tf32 = probe["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = probe["tf32_conv"]
    return {"matmul.allow_tf32": probe["tf32_matmul"], "cudnn.allow_tf32": probe["tf32_conv"]}


def mlp(sizes):
    import torch

    torch.manual_seed(0)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def cnn():
    import torch

    torch.manual_seed(0)
    T = torch.nn
    return T.Sequential(
        T.Conv2d(1, 32, 3, padding=1),
        T.ReLU(),
        T.MaxPool2d(2),
        T.Conv2d(32, 64, 3, padding=1),
        T.ReLU(),
        T.MaxPool2d(2),
        T.Flatten(),
        T.Linear(3136, 128),
        T.ReLU(),
        T.Linear(128, 10),
    )


def rows(what, make_model, xt, yt, batch_size, flops, hp) -> list[tuple]:
    """``[(row, fn)]``: the PyTorch loop, with malloc as the process found it.

    No row here changes malloc, because no change is undone when the row ends: one ``mallopt``
    call fixes glibc's mmap and trim thresholds for the whole process (its dynamic thresholds are
    off for good), so it would change every row timed after it. An earlier version of this bench
    timed PyTorch under ``mallopt(M_MMAP_THRESHOLD)`` at 128 KiB and at 1 GiB; after the first such
    row, every JAX row of the run paid page faults that a fresh process does not. On a 2-core AMD
    EPYC, jaxgd's MLP epoch at batch 256 took 0.46 s in a fresh process and 0.65 s after
    ``mallopt(M_MMAP_THRESHOLD, 128 KiB)``, and PyTorch's took 0.56 s and 0.89 s."""
    return [
        (
            {"name": f"PyTorch eager loop, {what}", "torch_device": device(), "flops": flops},
            loop(make_model(), xt, yt, batch_size, hp),
        )
    ]


def compiled_row(what, make_model, xt, yt, batch_size, flops, hp) -> tuple:
    """``(row, fn)``: the usual loop over a ``torch.compile``-d model (default mode on a CPU,
    ``"reduce-overhead"``, CUDA graphs, on CUDA). Its compile time is what the first epoch took
    beyond the second (inductor compiles the forward and backward on the first step)."""
    import torch

    on_cuda = device() == "cuda"
    model = torch.compile(make_model().to(device()), mode="reduce-overhead" if on_cuda else None)
    run = loop(model, xt, yt, batch_size, hp)
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    run()
    compile_s = first - (time.perf_counter() - t)
    mode = "reduce-overhead" if on_cuda else "default"
    return (
        {
            "name": f"PyTorch torch.compile ({mode}) loop, {what}",
            "torch_device": device(),
            "compile_s": compile_s,
            "flops": flops,
        },
        run,
    )


def under(context, fn):
    """``fn`` run inside ``context``, entered anew at every call."""

    def run():
        with context:
            fn()

    return run


def loop(model, xt, yt, batch_size, hp):
    """A callable running one epoch of PyTorch's usual loop: shuffle, zero_grad, forward,
    cross_entropy, backward, SGD step."""
    import torch

    dev = device()
    model, xt, yt = model.to(dev), xt.to(dev), yt.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=hp[0], momentum=hp[1], weight_decay=hp[2])
    n_b = xt.shape[0] // batch_size

    def run():
        perm = torch.randperm(xt.shape[0], device=dev)[: n_b * batch_size].view(n_b, batch_size)
        for i in perm:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xt[i]), yt[i])
            loss.backward()
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    return run


def time_config(model, hp, xt, yt, xv, yv, batch_size, epochs) -> float:
    """Seconds for one config: ``epochs`` of the usual loop, the running loss and accuracy kept on
    the device, and the validation loss and accuracy after every epoch, as ``train.fit`` reports them."""
    import torch

    dev = device()
    model = model.to(dev)
    xt, yt, xv, yv = xt.to(dev), yt.to(dev), xv.to(dev), yv.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=hp[0], momentum=hp[1], weight_decay=hp[2])
    n_b = xt.shape[0] // batch_size
    t = time.perf_counter()
    hist = []
    for _ in range(epochs):
        perm = torch.randperm(xt.shape[0], device=dev)[: n_b * batch_size].view(n_b, batch_size)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        for i in perm:
            opt.zero_grad(set_to_none=True)
            out = model(xt[i])
            loss = torch.nn.functional.cross_entropy(out, yt[i])
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            correct += (out.argmax(1) == yt[i]).sum()
        with torch.no_grad():
            out = model(xv)
            hist.append(
                torch.stack(
                    [
                        loss_sum / n_b,
                        correct / (n_b * batch_size),
                        torch.nn.functional.cross_entropy(out, yv),
                        (out.argmax(1) == yv).float().mean(),
                    ]
                )
            )
    torch.stack(hist).cpu()  # waits for the device
    return time.perf_counter() - t


def conv_parts(xs, dys, W) -> dict:
    """PyTorch's conv2 forward, weight gradient and input gradient of minibatch ``i`` of the NHWC
    stacks ``xs``/``dys`` and the HWIO kernel ``W``, in PyTorch's own layouts (NCHW, OIHW)."""
    import torch

    tx, tdy = (
        nchw(a.reshape((-1,) + a.shape[2:])).view(a.shape[0], a.shape[1], a.shape[4], *a.shape[2:4]) for a in (xs, dys)
    )
    tW = torch.tensor(np.asarray(W)).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    pad = [W.shape[0] // 2, W.shape[1] // 2]
    back = lambda mask, k: (
        lambda i: torch.ops.aten.convolution_backward(
            tdy[i], tx[i], tW, None, [1, 1], pad, [1, 1], False, [0, 0], 1, mask
        )[k]
    )
    return {
        "forward": lambda i: torch.nn.functional.conv2d(tx[i], tW, padding=pad),
        "weight gradient": back([False, True, False], 1),
        "input gradient": back([True, False, False], 0),
    }


def nchw(x):
    import torch

    return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def tensor(x):
    import torch

    return torch.tensor(np.asarray(x))


def long(y):
    import torch

    return torch.tensor(np.asarray(y), dtype=torch.long)
