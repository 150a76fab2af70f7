"""Data augmentation on the device, inside the compiled epoch, seeded: ``fit(step=Step(augment=...))``.

An augmentation is a pure function ``(key, xb) -> xb`` of one training minibatch; evaluation
never calls it. Images may be kept NHWC ``(n, h, w, c)`` or flattened ``(n, h*w*c)`` (then
``image_shape`` says how to read them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def hflip(x):
    """Mirror NHWC images left to right."""
    return x[:, :, ::-1, :]


def flip_crop(image_shape, pad=4, flip=True, crop=True):
    """Random horizontal flip (probability 1/2 per image) and a random ``h x w`` crop of the image
    zero-padded by ``pad`` pixels on each side (4 for 32x32 CIFAR images): the classic CIFAR
    augmentation. Zero is the mean pixel after ``data.load``'s normalisation."""
    h, w, c = image_shape
    if pad < 0 or not (flip or crop):
        raise ValueError(f"flip_crop needs pad >= 0 and flip or crop; got pad={pad}, flip={flip}, crop={crop}")

    def apply(key, xb):
        n = xb.shape[0]
        img = xb.reshape(n, h, w, c)
        k_flip, k_crop = jax.random.split(key)
        if flip:
            mirror = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
            img = jnp.where(mirror, hflip(img), img)
        if crop and pad:
            padded = jnp.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            corner = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
            img = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, corner)
        return img.reshape(xb.shape)

    return apply
