"""Models: LeNet-5 as in Jain et al. (2018) and a small MLP (flax.linen).

Training code sees parameters as plain pytrees (nested dicts of arrays), so
``model.init(key, x)["params"]`` goes straight into an optax optimizer.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LeNet5", "MLP", "MODELS", "make_model", "count_params"]


class _PatchConv(nn.Module):
    """A 'SAME' convolution computed as image patches times a matrix.

    Same parameters (``kernel`` of shape ``(kh, kw, c_in, c_out)``, ``bias``) and
    the same maths as ``nn.Conv(c_out, (kh, kw), padding="SAME")``; it only
    lowers differently. XLA:CPU runs the single-input-channel first layer of
    LeNet-5 on a slow convolution path (shared/PERF_NOTES.md); as a matmul over
    ``lax.conv_general_dilated_patches`` it is several times faster there.
    """

    features: int
    kernel_size: tuple[int, int]

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        c_in = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, c_in, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        patches = jax.lax.conv_general_dilated_patches(
            x, (kh, kw), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        # Patch features are ordered (c_in, kh, kw); bring the kernel into that order.
        k = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c_in * kh * kw, self.features)
        return patches @ k + bias


class LeNet5(nn.Module):
    """LeNet-5 exactly as shared/PAPERS.md §1 fixes it (input 28×28×C, NHWC).

    conv 5×5, 6 channels, padding 2 ('SAME') → ReLU → max-pool 2 →
    conv 5×5, 16 channels ('VALID') → ReLU → max-pool 2 →
    dense 120 → ReLU → dense 84 → ReLU → dense ``num_classes``.
    61 706 parameters for 28×28×1 inputs and 10 classes.

    Args:
        num_classes: outputs (logits).
        patch_conv1: compute the first convolution as patches × matrix (identical
            maths and parameters, faster on CPU); ``False`` uses ``nn.Conv``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import LeNet5, count_params
        >>> model = LeNet5()
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        >>> count_params(params)
        61706
        >>> model.apply({"params": params}, jnp.zeros((2, 28, 28, 1))).shape
        (2, 10)
    """

    num_classes: int = 10
    patch_conv1: bool = True

    @nn.compact
    def __call__(self, x):
        if self.patch_conv1:
            x = _PatchConv(6, (5, 5), name="Conv_0")(x)
        else:
            x = nn.Conv(6, (5, 5), padding="SAME", name="Conv_0")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.Conv(16, (5, 5), padding="VALID", name="Conv_1")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[:-3] + (-1,))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """A multilayer perceptron on flattened images: dense → ReLU, ..., dense.

    Args:
        hidden: widths of the hidden layers.
        num_classes: outputs (logits).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import MLP
        >>> model = MLP(hidden=(32,))
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        >>> model.apply({"params": params}, jnp.ones((3, 28, 28, 1))).shape
        (3, 10)
    """

    hidden: Sequence[int] = (256, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[:-3] + (-1,))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


MODELS = {"lenet5": LeNet5, "mlp": MLP}


def make_model(name: str, num_classes: int = 10) -> nn.Module:
    """Returns the model called ``name`` (one of :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.")
    return MODELS[name](num_classes=num_classes)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))
