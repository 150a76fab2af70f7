"""airbench94 in PyTorch, the reference jaxgd's ``experiments.airbench`` is compared with: a modified
copy of parts of airbench 0.1.8 (``airbench/lib_airbench94.py`` and ``airbench/utils.py`` of the
``airbench`` package on PyPI; KellerJordan/cifar10-airbench on GitHub), under airbench's MIT licence,
whose notice follows verbatim. Imported by the bench and the tests, never by the library; needs
``torch`` (``pip install -e '.[peers]' in the jaxgd checkout``).

    Copyright (c) 2024 Keller Jordan

    Permission is hereby granted, free of charge, to any person obtaining
    a copy of this software and associated documentation files (the
    "Software"), to deal in the Software without restriction, including
    without limitation the rights to use, copy, modify, merge, publish,
    distribute, sublicense, and/or sell copies of the Software, and to
    permit persons to whom the Software is furnished to do so, subject to
    the following conditions:

    The above copyright notice and this permission notice shall be
    included in all copies or substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
    EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
    MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
    NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE
    LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
    OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
    WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

What was changed from airbench 0.1.8:

- Taken: ``Flatten``, ``Mul``, ``BatchNorm``, ``Conv``, ``ConvGroup`` and ``make_net94`` (as
  ``make_net``) from ``lib_airbench94.py``; ``get_patches``, ``get_whitening_parameters``,
  ``init_whitening_conv``, ``LookaheadState``, ``batch_crop``, ``infer``'s test-time augmentation
  (as ``infer``) and the parts of ``train`` and ``CifarLoader.__iter__`` below from ``utils.py``. Left
  out: the ``hyp`` dict (its values are the defaults here), ``CifarLoader``'s loading and
  normalisation, cutout, ``evaluate``, logging, CUDA timing events and the warm-up run.
- ``make_net``: the widths as a tuple, ``classes``, ``scaling_factor`` and ``dtype`` as arguments;
  ``.to(dtype)`` instead of ``.half().cuda()``, and no float32 cast of the batch-norm layers.
- ``LookaheadState.update``: lerps float64 tensors too.
- ``triangle``: a module-level function (``train`` defines it inside).
- ``Trainer``: ``train``'s optimizer, schedules and lookahead set up in ``__init__``, the body of its
  loop over batches as ``step`` (one given batch), the whitening bias's freeze as ``start_epoch``;
  ``total_steps`` is ``train``'s ``ceil(len(train_loader) * epochs)`` from the sizes.
- ``train_epoch``: ``CifarLoader.__iter__`` with translate and alternating flip, on images already
  normalised, flipped and reflect-padded (what its first epoch computes), then ``Trainer.step``.
- ``infer``: the test-time augmentation of ``utils.infer`` on a given tensor, without the
  2,000-image split.
- PEP 8 spacing and shorter comments throughout.
- Added (jaxgd's own): ``load_jaxgd`` and ``nchw``, to start from jaxgd's parameters and images.
"""

from __future__ import annotations

from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, padding="same", bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


def make_net(widths=(64, 256, 256), classes=10, batchnorm_momentum=0.6, scaling_factor=1 / 9, dtype=torch.float32):
    """airbench's ``make_net94`` on the CPU (or wherever the caller moves it), in ``dtype``."""
    whiten_kernel_size = 2
    whiten_width = 2 * 3 * whiten_kernel_size**2
    net = nn.Sequential(
        Conv(3, whiten_width, whiten_kernel_size, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, widths[0], batchnorm_momentum),
        ConvGroup(widths[0], widths[1], batchnorm_momentum),
        ConvGroup(widths[1], widths[2], batchnorm_momentum),
        nn.MaxPool2d(3),
        Flatten(),
        nn.Linear(widths[2], classes, bias=False),
        Mul(scaling_factor),
    )
    net[0].weight.requires_grad = False
    return net.to(dtype).to(memory_format=torch.channels_last)


def get_patches(x, patch_shape):
    c, (h, w) = x.shape[1], patch_shape
    return x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()


def get_whitening_parameters(patches):
    n, c, h, w = patches.shape
    patches_flat = patches.view(n, -1)
    est_patch_covariance = (patches_flat.T @ patches_flat) / n
    eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO="U")
    return eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)


def init_whitening_conv(layer, train_set, eps=5e-4):
    patches = get_patches(train_set, patch_shape=layer.weight.data.shape[2:])
    eigenvalues, eigenvectors = get_whitening_parameters(patches)
    eigenvectors_scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))


class LookaheadState:
    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float, torch.double):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


def triangle(steps, start=0, end=0, peak=0.5):
    xp = torch.tensor([0, int(peak * steps), steps])
    fp = torch.tensor([start, 1, end])
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - (m * xp[:-1])
    indices = torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1
    indices = torch.clamp(indices, 0, len(m) - 1)
    return m[indices] * x + b[indices]


class Trainer:
    """airbench's ``train`` loop, one step at a time on given batches (NCHW tensors): its two
    parameter groups, Nesterov SGD, triangle schedule, lookahead and the whitening bias's freeze."""

    def __init__(
        self,
        model,
        batch_size,
        total_train_steps,
        learning_rate=11.5,
        momentum=0.85,
        weight_decay=0.0153,
        bias_scaler=64.0,
        label_smoothing=0.2,
    ):
        self.model, self.total_train_steps, self.current_steps = model, total_train_steps, 0
        kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
        lr = learning_rate / kilostep_scale
        wd = weight_decay * batch_size / kilostep_scale
        lr_biases = lr * bias_scaler
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="none")
        norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
        other_params = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
        param_configs = [
            dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
            dict(params=other_params, lr=lr, weight_decay=wd / lr),
        ]
        self.optimizer = torch.optim.SGD(param_configs, momentum=momentum, nesterov=True)
        lr_schedule = triangle(total_train_steps, start=0.2, end=0.07, peak=0.23)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: lr_schedule[i])
        self.alpha_schedule = 0.95**5 * (torch.arange(total_train_steps + 1) / total_train_steps) ** 3
        self.lookahead_state = LookaheadState(model)

    def start_epoch(self, epoch, whiten_bias_epochs=3):
        self.model[0].bias.requires_grad = epoch < whiten_bias_epochs
        self.model.train()

    def step(self, inputs, labels):
        """One training step; False once the steps are all taken."""
        if self.current_steps >= self.total_train_steps:
            return False
        outputs = self.model(inputs)
        loss = self.loss_fn(outputs, labels).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.current_steps += 1
        if self.current_steps % 5 == 0:
            self.lookahead_state.update(self.model, decay=self.alpha_schedule[self.current_steps].item())
        if self.current_steps >= self.total_train_steps:
            self.lookahead_state.update(self.model, decay=1.0)
        return True


def total_steps(n_train, batch_size, epochs):
    return ceil((n_train // batch_size) * epochs)


def batch_crop(images, crop_size):
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2), device=images.device)
    images_out = torch.empty((len(images), 3, crop_size, crop_size), device=images.device, dtype=images.dtype)
    # The two cropping methods in this if-else produce equivalent results, but the second is faster for r > 2.
    if r <= 2:
        for sy in range(-r, r + 1):
            for sx in range(-r, r + 1):
                mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
                images_out[mask] = images[mask, :, r + sy : r + sy + crop_size, r + sx : r + sx + crop_size]
    else:
        images_tmp = torch.empty(
            (len(images), 3, crop_size, crop_size + 2 * r), device=images.device, dtype=images.dtype
        )
        for s in range(-r, r + 1):
            mask = shifts[:, 0] == s
            images_tmp[mask] = images[mask, :, r + s : r + s + crop_size, :]
        for s in range(-r, r + 1):
            mask = shifts[:, 1] == s
            images_out[mask] = images_tmp[mask, :, :, r + s : r + s + crop_size]
    return images_out


def train_epoch(trainer, padded, labels, epoch, batch_size, crop_size=32, whiten_bias_epochs=3):
    """One epoch of airbench's loop: ``CifarLoader.__iter__`` with translate and alternating flip
    (on the pre-flipped, reflect-padded images ``padded``), then ``trainer.step`` per minibatch."""
    trainer.start_epoch(epoch, whiten_bias_epochs)
    images = batch_crop(padded, crop_size)
    if epoch % 2 == 1:
        images = images.flip(-1)
    indices = torch.randperm(len(images), device=images.device)
    for i in range(len(images) // batch_size):
        idxs = indices[i * batch_size : (i + 1) * batch_size]
        trainer.step(images[idxs], labels[idxs])


def infer(model, inputs, tta_level=0):
    """airbench's ``infer`` on one tensor of normalised images: logits with test-time augmentation
    (0: none, 1: mirror, 2: mirror and translate)."""

    def infer_basic(inputs, net):
        return net(inputs).clone()

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,) * 4, "reflect")
        inputs_translate_list = [
            padded_inputs[:, :, 0:32, 0:32],
            padded_inputs[:, :, 2:34, 2:34],
        ]
        logits_translate_list = [infer_mirror(inputs_translate, net) for inputs_translate in inputs_translate_list]
        logits_translate = torch.stack(logits_translate_list).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    infer_fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    with torch.no_grad():
        return infer_fn(inputs, model)


# ------------------------------------------------------------------------------ from jaxgd's parameters


def load_jaxgd(net, params, state):
    """Copy ``models.airbench``'s parameters and batch-norm statistics into airbench's ``net``
    (HWIO kernels to OIHW, dense ``(in, out)`` to ``(out, in)``)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    linear = next(m for m in net.modules() if isinstance(m, nn.Linear))
    t = lambda a: torch.tensor(np.asarray(a), dtype=net[0].weight.dtype)
    jconv = [p for p in params if "W" in p and np.ndim(p["W"]) == 4]
    jnorm = [(p, s) for p, s in zip(params, state) if "scale" in p]
    with torch.no_grad():
        for m, p in zip(convs, jconv):
            m.weight.copy_(t(p["W"]).permute(3, 2, 0, 1))
            if m.bias is not None:
                m.bias.copy_(t(p["b"]))
        for m, (p, s) in zip(norms, jnorm):
            m.weight.copy_(t(p["scale"]))
            m.bias.copy_(t(p["shift"]))
            m.running_mean.copy_(t(s["mean"]))
            m.running_var.copy_(t(s["var"]))
        linear.weight.copy_(t(params[-2]["W"]).T)


def nchw(x, dtype=torch.float32):
    return torch.tensor(np.asarray(x), dtype=dtype).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
