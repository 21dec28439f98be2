"""Models: LeNet-5 as in Jain et al. (2018), a small MLP, ResNet-20 for CIFAR-10 and a byte-level
decoder-only Transformer language model (flax.linen).

Training code sees parameters as plain pytrees (nested dicts of arrays), so
``model.init(key, x)["params"]`` goes straight into an optax optimizer.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LeNet5", "MLP", "ResNet20", "Transformer", "MODELS", "TRANSFORMER_KEYS", "parse_model", "make_model",
           "sinusoidal_positions", "count_params"]


class _PatchConv(nn.Module):
    """A 'SAME' convolution computed as image patches times a matrix.

    Same parameters (``kernel`` of shape ``(kh, kw, c_in, c_out)``, ``bias``) and
    the same maths as ``nn.Conv(c_out, (kh, kw), padding="SAME")``; it only
    lowers differently. XLA:CPU runs the single-input-channel first layer of
    LeNet-5 on a slow convolution path; as a matmul over
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


class _ConvParams(nn.Module):
    """Just the parameters of ``nn.Conv(features, kernel_size)``: same names, shapes and initializers."""

    features: int
    kernel_size: tuple[int, int]

    @nn.compact
    def __call__(self, c_in: int):
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, c_in, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel, bias


@jax.custom_vjp
def _pool4(y):
    """Max over axis 1 of ``y`` of shape ``(N, 4, C)``: the 4 entries of a 2×2 max-pool window, row-major.

    Computed as elementwise maxima; the gradient goes to the first maximum of
    each window in row-major order, exactly as ``lax.reduce_window``'s gradient
    (select-and-scatter) routes it, but as elementwise compares and selects:
    XLA:CPU runs select-and-scatter far slower than elementwise code.
    """
    return jnp.maximum(jnp.maximum(y[:, 0], y[:, 1]), jnp.maximum(y[:, 2], y[:, 3]))


def _pool4_fwd(y):
    m = _pool4(y)
    return m, (y, m)


def _pool4_bwd(res, g):
    y, m = res
    taken = jnp.zeros(m.shape, bool)
    parts = []
    for a in range(4):
        sel = (y[:, a] == m) & ~taken
        taken = taken | sel
        parts.append(jnp.where(sel, g, jnp.zeros_like(g)))
    return (jnp.stack(parts, 1),)


_pool4.defvjp(_pool4_fwd, _pool4_bwd)


def _s2d_kernel(k, r: int):
    """The kernel of a stride-1 convolution rewritten on ``r``×``r`` space-to-depth blocks.

    ``k`` has shape ``(kh, kh, ci, co)``. Input blocks hold ``r·r·ci`` channels
    ordered ``(row phase e, column phase f, ci)``; output blocks ``r·r·co``
    channels ordered ``(d, g, co)``. Block offset ``a`` with phases ``e → d`` reads
    ``k[r·a + e − d]`` (zero outside the kernel). The result has shape
    ``(A, A, r·r·ci, r·r·co)`` with ``A = ceil((kh − 1) / r) + 1``.
    """
    kh, kw, ci, co = k.shape
    n_a = (kh - 1 + r - 1) // r + 1
    idx = r * np.arange(n_a)[:, None, None] + np.arange(r)[None, :, None] - np.arange(r)[None, None, :]
    valid = (idx >= 0) & (idx < kh)
    idx = np.clip(idx, 0, kh - 1)
    kk = k[idx[:, :, :, None, None, None], idx[None, None, None, :, :, :]]  # (a,e,d,b,f,g,ci,co)
    mask = (valid[:, :, :, None, None, None] & valid[None, None, None, :, :, :]).astype(k.dtype)
    kk = jnp.transpose(kk * mask[..., None, None], (0, 3, 1, 4, 6, 2, 5, 7))  # (a,b,e,f,ci,d,g,co)
    return kk.reshape(n_a, n_a, r * r * ci, r * r * co)


def _s2d_features(x, k1, b1, k2, b2):
    """LeNet-5's convolution stack on 4×4 / 2×2 space-to-depth blocks (identical maths).

    ``x``: ``(B, H, W, C)`` with ``H`` and ``W`` multiples of 4. conv1 (5×5 SAME)
    becomes a 2×2 convolution on 4×4 blocks (``16·C`` → ``96`` channels), computed
    as four shifted slices times one matrix; pool 1 is then a max over channel
    groups, and its output is already in the 2×2-block layout that conv 2
    (5×5 VALID) needs as a 3×3 convolution on 2×2 blocks (24 → 64 channels),
    again computed as shifted slices times one matrix, whose pool is again a
    max over channel groups. Max-pool and ReLU commute, so ReLU follows the
    pool, and each bias is added after its pool (exactly equal, see below).
    Returns ``(B, H/4 − 2, W/4 − 2, 16)`` = ``relu(pool(conv2(relu(pool(conv1(x))))))``
    in NHWC.

    Why: XLA:CPU runs the one-input-channel conv 1 and the select-and-scatter
    gradient of max-pool slowly; on blocks every layer is a well-shaped
    matmul or convolution and both pools are elementwise (the measured speed-up is
    in the README's Speed section).
    """
    bsz, h, w, c = x.shape
    hb, wb = (h + 4) // 4, (w + 4) // 4
    xp = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    xs = xp.reshape(bsz, hb, 4, wb, 4, c).transpose(0, 1, 3, 2, 4, 5).reshape(bsz, hb, wb, 16 * c)
    oh, ow = hb - 1, wb - 1
    cols = jnp.concatenate([xs[:, i : i + oh, j : j + ow, :] for i in (0, 1) for j in (0, 1)], axis=-1)
    # Output channels (d, g, c) with d = 2·e + a, g = 2·f + b, reordered to (a, b, e, f, c): the 2×2
    # pool over (a, b) is then a max of four contiguous 24-channel slices, leaving (e, f, c) = 2×2 blocks.
    k = _s2d_kernel(k1, 4).reshape(64 * c, 2, 2, 2, 2, 6).transpose(0, 2, 4, 1, 3, 5).reshape(64 * c, 96)
    y = _pool4((cols.reshape(-1, 64 * c) @ k).reshape(-1, 4, 24))
    # The bias is the same for all four entries of a window and x ↦ fl(x + b) is monotone, so
    # max(y + b) = max(y) + b exactly: add it after the pool, on a 4× smaller array.
    hblk = jax.nn.relu(y + jnp.tile(b1, 4)).reshape(bsz, oh, ow, 24)
    # conv 2 as 9 shifted slices times one matrix too: on XLA:CPU this im2col form (and its kernel
    # gradient, one matmul) runs faster than lax.conv_general_dilated.
    ph, pw = oh - 2, ow - 2
    cols = jnp.concatenate([hblk[:, i : i + ph, j : j + pw, :] for i in range(3) for j in range(3)], axis=-1)
    # Output channels (d, g, c) = (a, b, c): the pool is again over four contiguous slices.
    y = _pool4((cols.reshape(-1, 9 * 24) @ _s2d_kernel(k2, 2).reshape(9 * 24, 64)).reshape(-1, 4, 16))
    return jax.nn.relu(y + b2).reshape(bsz, ph, pw, 16)


class LeNet5(nn.Module):
    """LeNet-5 as Jain et al. (2018) train it (input 28×28×C, NHWC).

    The paper's setting: docs/methods.md#constant-delay-jain-et-al-2018.

    conv 5×5, 6 channels, padding 2 ('SAME') → ReLU → max-pool 2 →
    conv 5×5, 16 channels ('VALID') → ReLU → max-pool 2 →
    dense 120 → ReLU → dense 84 → ReLU → dense ``num_classes``.
    61 706 parameters for 28×28×1 inputs and 10 classes.

    Args:
        num_classes: outputs (logits).
        impl: how the convolution stack is computed; the parameters (names,
            shapes, initial values) and the maths are the same for all three:
            ``"s2d"`` (default; fastest on CPU): both convolutions on
            space-to-depth blocks, pools as elementwise maxima with the
            first-maximum gradient of ``reduce_window``; used when height and
            width are multiples of 4, else ``"conv"``. ``"patches"``: conv 1 as
            image patches × matrix. ``"conv"``: ``nn.Conv`` and ``nn.max_pool``.

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
    impl: str = "s2d"

    @nn.compact
    def __call__(self, x):
        if self.impl not in ("s2d", "patches", "conv"):
            raise ValueError(f"unknown LeNet5 impl {self.impl!r}; choose 's2d', 'patches' or 'conv'.")
        h, w, c = x.shape[-3:]
        if self.impl == "s2d" and h % 4 == 0 and w % 4 == 0 and h >= 12 and w >= 12:
            k1, b1 = _ConvParams(6, (5, 5), name="Conv_0")(c)
            k2, b2 = _ConvParams(16, (5, 5), name="Conv_1")(6)
            lead = x.shape[:-3]
            x = _s2d_features(x.reshape((-1, h, w, c)), k1, b1, k2, b2)
            x = x.reshape(lead + (-1,))
        else:
            if self.impl == "patches":
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


class _BasicBlock(nn.Module):
    """Two 3×3 convolutions, each followed by GroupNorm, plus the shortcut; see :class:`ResNet20`."""

    features: int
    strides: int
    num_groups: int

    @nn.compact
    def __call__(self, x):
        conv = dict(use_bias=False, kernel_init=nn.initializers.he_normal())
        groups = min(self.num_groups, self.features)
        s = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1", **conv)(x)
        y = nn.relu(nn.GroupNorm(num_groups=groups, name="norm1")(y))
        y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2", **conv)(y)
        y = nn.GroupNorm(num_groups=groups, name="norm2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:  # option B: a projection
            x = nn.Conv(self.features, (1, 1), s, padding="VALID", name="proj", **conv)(x)
            x = nn.GroupNorm(num_groups=groups, name="proj_norm")(x)
        return nn.relu(y + x)


class ResNet20(nn.Module):
    r"""ResNet-20 for CIFAR-10 (He et al. 2016, §4.2), with GroupNorm in place of BatchNorm.

    Input ``x``: float32 images ``(..., H, W, C)`` (NHWC, any size and channel
    count, like :class:`LeNet5` and :class:`MLP`; leading axes are batch axes).
    With :math:`n = 3`, the network is :math:`6n + 2 = 20` weighted layers:

    - a 3×3 convolution with 16 filters (stride 1, padding 1), GroupNorm, ReLU;
    - three stages of :math:`n` basic blocks with 16, 32 and 64 filters; the
      first block of stages 2 and 3 has stride 2 (so a 32×32 input gives
      feature maps of 32×32, 16×16, 8×8). A block computes
      :math:`\mathrm{relu}(\mathrm{GN}(W_2 * \mathrm{relu}(\mathrm{GN}(W_1 * x))) + S(x))`
      with 3×3 convolutions :math:`W_1` (carrying the stride) and :math:`W_2`,
      padding 1 on each side (like PyTorch's ``padding=1``; XLA's ``"SAME"``
      would pad a stride-2 convolution on one side only);
      the shortcut :math:`S` is the identity, or, where the shape changes, a
      1×1 convolution with stride 2 followed by GroupNorm (He et al.'s
      projection **option B**; **(choice)** their CIFAR-10 networks use the
      parameter-free option A, zero-padded identity, which differs by these
      two projections' 2 560 weights and their GroupNorm);
    - global average pooling over height and width, and a dense layer to
      ``num_classes`` logits.

    Convolutions have no bias (the normalization that follows has one) and He
    (fan-in, truncated normal) initialization; the dense layer has flax's defaults.
    272 474 parameters for 3 input channels and 10 classes (see
    ``tests/test_models.py`` for the count).

    Normalization, **(choice)**: GroupNorm (Wu & He 2018) with
    ``min(num_groups, channels)`` groups (default 8: 2, 4 and 8 channels per
    group in the three stages) instead of He et al.'s BatchNorm. The library's
    training state is the parameters alone (``model.apply({"params": p}, x)``,
    gradients at stale parameters from delay buffers), which has no place for
    BatchNorm's running statistics; and GroupNorm normalizes each sample on its
    own, so a gradient does not depend on which other samples share its batch,
    across simulated workers or vmapped configs. Hsieh et al. (2020, "The
    non-IID data quagmire of decentralized machine learning") recommend
    GroupNorm over BatchNorm for distributed training, as BatchNorm's batch
    statistics depend on which data each worker's batches hold; Wu & He report
    GroupNorm's accuracy changing little with the number of groups (ResNet-50,
    ImageNet).

    Args:
        num_classes: outputs (logits).
        blocks_per_stage: :math:`n`; 3 gives ResNet-20 (5: ResNet-32, 9: ResNet-56).
        num_groups: GroupNorm groups per normalization (capped at the channel count).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import ResNet20, count_params
        >>> model = ResNet20()
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
        >>> count_params(params)
        272474
        >>> model.apply({"params": params}, jnp.zeros((2, 32, 32, 3))).shape
        (2, 10)
    """

    num_classes: int = 10
    blocks_per_stage: int = 3
    num_groups: int = 8

    @nn.compact
    def __call__(self, x):
        if x.ndim < 3:
            raise ValueError(f"ResNet20 takes images (..., H, W, C), got shape {x.shape}.")
        lead = x.shape[:-3]
        # GroupNorm reduces over every axis but the first: keep exactly one batch axis.
        x = x.reshape((-1,) + x.shape[-3:])
        x = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=nn.initializers.he_normal(), name="conv")(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(self.num_groups, 16), name="norm")(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                x = _BasicBlock(features, strides, self.num_groups, name=name)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, name="head")(x)
        return x.reshape(lead + (self.num_classes,))


class _Block(nn.Module):
    """One pre-LayerNorm decoder block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``; see :class:`Transformer`."""

    width: int
    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x, mask):
        y = nn.LayerNorm(name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width, out_features=self.width,
                                            deterministic=True, name="attn")(y, mask=mask)
        x = x + y
        y = nn.LayerNorm(name="ln2")(x)
        y = nn.Dense(self.mlp_ratio * self.width, name="mlp_in")(y)
        y = nn.Dense(self.width, name="mlp_out")(nn.gelu(y))
        return x + y


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    r"""Vaswani et al.'s fixed position encodings, ``(length, width)`` float32.

    :math:`P_{t, 2i} = \sin(t / 10000^{2i/d})`, :math:`P_{t, 2i+1} = \cos(t / 10000^{2i/d})` for
    :math:`d` = ``width`` (even).

    >>> [round(float(v), 3) for v in sinusoidal_positions(3, 4)[1]]   # t = 1: sin 1, cos 1, sin .01, cos .01
    [0.841, 0.54, 0.01, 1.0]
    """
    t = np.arange(length, dtype=np.float64)[:, None]
    freq = 1.0 / 10000.0 ** (np.arange(0, width, 2, dtype=np.float64) / width)
    out = np.zeros((length, width), np.float64)
    out[:, 0::2], out[:, 1::2] = np.sin(t * freq), np.cos(t * freq)
    return out.astype(np.float32)


class Transformer(nn.Module):
    r"""A pre-LayerNorm decoder-only Transformer language model (Vaswani et al. 2017, GPT-style).

    Input: int32 tokens ``(..., T)`` with ``T <= context`` (leading axes are
    batch axes); output: logits ``(..., T, vocab_size)``, position ``t``
    predicting token ``t + 1``. With width :math:`d`, :math:`h` heads of
    width :math:`d_h = d / h`:

    - :math:`x_0 = E[\text{tokens}] + P_{0..T-1}` (token embedding ``nn.Embed``;
      positions ``P`` learned, ``normal(0.02)``, or fixed sinusoids, ``positions``);
    - ``layers`` blocks :math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}(x))`,
      :math:`x \leftarrow x + W_2\,\mathrm{gelu}(W_1 \mathrm{LN}(x))`, where
      :math:`\mathrm{Attn}` is ``nn.MultiHeadDotProductAttention``: per head
      :math:`\mathrm{softmax}(q k^\top / \sqrt{d_h} + M)\, v`, with the causal
      mask :math:`M_{ts} = -\infty` for :math:`s > t` (``nn.make_causal_mask``),
      heads concatenated and projected back to :math:`d`; :math:`W_1` has
      ``mlp_ratio`` · :math:`d` outputs;
    - a final LayerNorm and a dense layer to ``vocab_size`` logits.

    No dropout and no batch statistics: the training state is the parameters
    alone, and one sequence's logits (so its gradient) do not depend on the other
    sequences of its batch. Build it from a spec with :func:`make_model`, e.g.
    ``make_model("transformer:layers=2,width=128,heads=4,context=128", 256)``.

    Args:
        vocab_size: tokens (256 for bytes); the output logits.
        layers: decoder blocks.
        width: model width :math:`d` (a multiple of ``heads``).
        heads: attention heads.
        context: the longest sequence (the learned position table's length).
        mlp_ratio: the MLP's hidden width over :math:`d`.
        positions: ``"learned"`` or ``"sinusoidal"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from asgd_jax import Transformer, count_params
        >>> model = Transformer(layers=1, width=32, heads=4, context=16)
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
        >>> model.apply({"params": params}, jnp.zeros((2, 3, 16), jnp.int32)).shape
        (2, 3, 16, 256)
        >>> count_params(params)   # embed 8192 + positions 512 + block 12704 + final LN 64 + head 8448
        29920
    """

    vocab_size: int = 256
    layers: int = 2
    width: int = 128
    heads: int = 4
    context: int = 128
    mlp_ratio: int = 4
    positions: str = "learned"

    @nn.compact
    def __call__(self, tokens):
        _check_transformer(self.layers, self.width, self.heads, self.context, self.mlp_ratio, self.positions)
        t = tokens.shape[-1]
        if t > self.context:
            raise ValueError(f"Transformer: sequences of {t} tokens exceed its context of {self.context}; "
                             "use a longer context or shorter windows.")
        x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
        if self.positions == "learned":
            pos = self.param("pos_embedding", nn.initializers.normal(0.02), (self.context, self.width), jnp.float32)
            x = x + pos[:t]
        else:
            x = x + jnp.asarray(sinusoidal_positions(t, self.width))
        mask = nn.make_causal_mask(tokens)
        for i in range(self.layers):
            x = _Block(self.width, self.heads, self.mlp_ratio, name=f"block{i}")(x, mask)
        x = nn.LayerNorm(name="ln_final")(x)
        return nn.Dense(self.vocab_size, name="head")(x)


# The keys of a "transformer:key=value,..." spec, with their types and defaults.
TRANSFORMER_KEYS = {"layers": 2, "width": 128, "heads": 4, "context": 128, "mlp": 4, "positions": "learned"}


def _check_transformer(layers, width, heads, context, mlp, positions) -> None:
    for k, v in (("layers", layers), ("width", width), ("heads", heads), ("context", context), ("mlp", mlp)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"transformer: {k} must be a positive integer, got {v!r}.")
    if width % heads:
        raise ValueError(f"transformer: heads={heads} does not divide width={width}; choose a width that is a "
                         f"multiple of the heads (e.g. width={heads * max(1, round(width / heads))}).")
    if positions not in ("learned", "sinusoidal"):
        raise ValueError(f"transformer: positions must be 'learned' or 'sinusoidal', got {positions!r}.")
    if positions == "sinusoidal" and width % 2:
        raise ValueError(f"transformer: sinusoidal positions need an even width, got {width}.")


def parse_model(name: str) -> tuple[str, dict]:
    """Checks a model spec and returns ``(family, options)``; a one-line ``ValueError`` if it is bad.

    A spec is a name of :data:`MODELS`, or ``"transformer:key=value,..."`` with
    keys of :data:`TRANSFORMER_KEYS` (``layers``, ``width``, ``heads``,
    ``context``, ``mlp``: the MLP ratio, ``positions``: ``learned`` or
    ``sinusoidal``); keys left out take their defaults.

    >>> parse_model("transformer:layers=1,width=64")
    ('transformer', {'layers': 1, 'width': 64, 'heads': 4, 'context': 128, 'mlp': 4, 'positions': 'learned'})
    >>> parse_model("transformer:depth=2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown transformer option 'depth' in 'transformer:depth=2'; use layers, width, heads, ...
    """
    if not isinstance(name, str):
        raise ValueError(f"model must be a string, got {type(name).__name__}.")
    family, sep, rest = name.partition(":")
    if family not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)} "
                         "(e.g. transformer:layers=2,width=128,heads=4,context=128).")
    if family != "transformer":
        if sep:
            raise ValueError(f"model {family!r} takes no options; write {family!r}.")
        return family, {}
    opts = dict(TRANSFORMER_KEYS)
    for item in rest.split(",") if rest else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in TRANSFORMER_KEYS:
            raise ValueError(f"unknown transformer option {key!r} in {name!r}; use {', '.join(TRANSFORMER_KEYS)}.")
        if not eq or not value:
            raise ValueError(f"transformer option {key!r} in {name!r} needs a value, e.g. {key}="
                             f"{TRANSFORMER_KEYS[key]}.")
        if key == "positions":
            opts[key] = value
        else:
            try:
                opts[key] = int(value)
            except ValueError:
                raise ValueError(f"transformer option {key}={value!r} in {name!r} is not an integer.") from None
    _check_transformer(opts["layers"], opts["width"], opts["heads"], opts["context"], opts["mlp"], opts["positions"])
    return family, opts


MODELS = {"lenet5": LeNet5, "mlp": MLP, "resnet20": ResNet20, "transformer": Transformer}


def make_model(name: str, num_classes: int = 10) -> nn.Module:
    """Returns the model of spec ``name`` (see :func:`parse_model`); ``num_classes`` is a Transformer's vocabulary.

    >>> make_model("transformer:layers=1,width=32,heads=2,context=8", 256).heads
    2
    """
    family, opts = parse_model(name)
    if family == "transformer":
        return Transformer(vocab_size=num_classes, layers=opts["layers"], width=opts["width"], heads=opts["heads"],
                           context=opts["context"], mlp_ratio=opts["mlp"], positions=opts["positions"])
    return MODELS[family](num_classes=num_classes)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))
