"""Tests for asgd_jax.models: LeNet-5 and the MLP against a naive NumPy forward pass; ResNet-20."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax.models import MLP, MODELS, LeNet5, ResNet20, count_params, make_model

# --- an independent NumPy forward pass ----------------------------------------------------------


def np_conv2d(x, kernel, bias, padding):
    """Naive NHWC / HWIO convolution, stride 1, with explicit loops over kernel offsets."""
    kh, kw, c_in, c_out = kernel.shape
    if padding == "SAME":  # odd kernels: (k - 1) / 2 zeros on each side
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        x = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    out = np.zeros((n, oh, ow, c_out), np.float64)
    for di in range(kh):
        for dj in range(kw):
            window = x[:, di : di + oh, dj : dj + ow, :]  # (n, oh, ow, c_in)
            for c in range(c_in):
                out += window[..., c : c + 1] * kernel[di, dj, c][None, None, None, :]
    return out + bias


def np_relu(x):
    return np.maximum(x, 0.0)


def np_max_pool_2x2(x):
    n, h, w, c = x.shape
    out = np.full((n, h // 2, w // 2, c), -np.inf)
    for di in range(2):
        for dj in range(2):
            out = np.maximum(out, x[:, di : 2 * (h // 2) : 2, dj : 2 * (w // 2) : 2, :])
    return out


def np_dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def np_lenet5(params, x):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    x = np_max_pool_2x2(np_relu(np_conv2d(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], "SAME")))
    x = np_max_pool_2x2(np_relu(np_conv2d(x, p["Conv_1"]["kernel"], p["Conv_1"]["bias"], "VALID")))
    x = x.reshape(x.shape[0], -1)  # (n, 4, 4, 16) -> (n, 400), row-major H, W, C
    x = np_relu(np_dense(x, p["Dense_0"]))
    x = np_relu(np_dense(x, p["Dense_1"]))
    return np_dense(x, p["Dense_2"])


def np_mlp(params, x, layers):
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    for i in range(layers - 1):
        x = np_relu(np_dense(x, params[f"Dense_{i}"]))
    return np_dense(x, params[f"Dense_{layers - 1}"])


def _init(model, shape, seed=0):
    """The parameter tree's shapes and dtypes (no values).

    ``jax.eval_shape`` traces ``init`` without compiling it: a real LeNet-5 init costs seconds of
    XLA:CPU compile time, and the tests below fill the parameters with their own random values.
    """
    return jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1,) + shape, jnp.float32))["params"]


def _randomize(params, seed):
    """Replaces every leaf by random values: kernels with std 1/sqrt(fan_in) (logits of order 1),
    biases (which init sets to zero) with std 0.1, so a bias bug cannot hide."""
    rng = np.random.default_rng(seed)

    def draw(p):
        if p.ndim == 1:
            return jnp.asarray(0.1 * rng.normal(size=p.shape), jnp.float32)
        fan_in = int(np.prod(p.shape[:-1]))
        return jnp.asarray(rng.normal(size=p.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(draw, params)


# --- LeNet-5 ------------------------------------------------------------------------------------


class LeNet5Test(chex.TestCase):
    def test_parameter_count(self):
        # Spatial sizes: 28 -conv SAME-> 28 -pool-> 14 -conv VALID 5x5-> 10 -pool-> 5,
        # so the flattened size is 5 * 5 * 16 = 400.
        # conv1: 5*5*1*6 + 6    =   156
        # conv2: 5*5*6*16 + 16  =  2416
        # dense: 400*120 + 120  = 48120
        #        120*84 + 84    = 10164
        #        84*10 + 10     =   850
        # total                 = 61706
        expected = 156 + 2416 + 48120 + 10164 + 850
        self.assertEqual(expected, 61706)
        for impl in ("s2d", "patches", "conv"):
            params = _init(LeNet5(impl=impl), (28, 28, 1))
            self.assertEqual(count_params(params), expected)
            chex.assert_shape(params["Conv_0"]["kernel"], (5, 5, 1, 6))
            chex.assert_shape(params["Conv_1"]["kernel"], (5, 5, 6, 16))
            chex.assert_shape(params["Dense_0"]["kernel"], (400, 120))
            chex.assert_shape(params["Dense_1"]["kernel"], (120, 84))
            chex.assert_shape(params["Dense_2"]["kernel"], (84, 10))

    def test_patch_and_conv_share_parameter_structure(self):
        b = _init(LeNet5(impl="conv"), (28, 28, 1))
        for impl in ("s2d", "patches"):
            a = _init(LeNet5(impl=impl), (28, 28, 1))
            self.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
            self.assertEqual(
                jax.tree.map(lambda l: (l.shape, l.dtype), a), jax.tree.map(lambda l: (l.shape, l.dtype), b)
            )
            chex.assert_trees_all_equal(a, b)  # same initial values too

    def test_output_shape(self):
        model = LeNet5()
        params = _randomize(_init(model, (28, 28, 1)), 0)
        for n in (1, 5):
            out = jax.jit(model.apply)({"params": params}, jnp.zeros((n, 28, 28, 1)))
            chex.assert_shape(out, (n, 10))
            chex.assert_type(out, jnp.float32)
        out = jax.jit(LeNet5(num_classes=3).apply)(
            {"params": _randomize(_init(LeNet5(num_classes=3), (28, 28, 1)), 0)}, jnp.zeros((2, 28, 28, 1))
        )
        chex.assert_shape(out, (2, 3))

    def test_forward_matches_numpy(self):
        rng = np.random.default_rng(0)
        for channels in (1, 3):
            with self.subTest(channels=channels):
                params = _randomize(_init(LeNet5(), (28, 28, channels)), seed=channels)
                x = jnp.asarray(rng.uniform(size=(2, 28, 28, channels)), jnp.float32)
                expected = np_lenet5(params, x)
                # The reference is not degenerate: logits differ between the two inputs.
                self.assertGreater(float(np.abs(expected[0] - expected[1]).max()), 1e-2)
                conv = jax.jit(LeNet5(impl="conv").apply)({"params": params}, x)
                scale = float(np.abs(expected).max())
                chex.assert_trees_all_close(conv, expected.astype(np.float32), rtol=1e-4, atol=1e-5 * scale)
                for impl in ("s2d", "patches"):
                    out = jax.jit(LeNet5(impl=impl).apply)({"params": params}, x)
                    chex.assert_trees_all_close(out, conv, rtol=1e-5, atol=1e-5)
                    chex.assert_trees_all_close(out, expected.astype(np.float32), rtol=1e-4, atol=1e-5 * scale)

    def test_gradients_agree_across_impls(self):
        # The s2d pools route gradients like reduce_window's select-and-scatter (first
        # maximum of a window), also on the ties that ReLU's zeros create.
        rng = np.random.default_rng(1)
        params = _randomize(_init(LeNet5(), (28, 28, 1)), seed=3)
        x = jnp.asarray(rng.uniform(size=(4, 28, 28, 1)) * (rng.uniform(size=(4, 28, 28, 1)) > 0.5), jnp.float32)
        y = jnp.asarray([0, 3, 7, 9])

        def grads(impl):
            def loss(p):
                logits = LeNet5(impl=impl).apply({"params": p}, x)
                return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()

            return jax.jit(jax.grad(loss))(params)

        ref = grads("conv")
        for impl in ("s2d", "patches"):
            chex.assert_trees_all_close(grads(impl), ref, rtol=1e-4, atol=1e-6)

    def test_s2d_falls_back_for_other_sizes(self):
        model = LeNet5()
        params = _randomize(_init(model, (30, 30, 1)), 0)
        out = model.apply({"params": params}, jnp.ones((2, 30, 30, 1)))
        ref = LeNet5(impl="conv").apply({"params": params}, jnp.ones((2, 30, 30, 1)))
        chex.assert_trees_all_close(out, ref)

    def test_numpy_conv_reference_sanity(self):
        # Hand-derived: a 3x3 all-ones kernel on a 3x3 image of ones, SAME padding, counts neighbours.
        x = np.ones((1, 3, 3, 1))
        k = np.ones((3, 3, 1, 1))
        out = np_conv2d(x, k, np.zeros(1), "SAME")[0, :, :, 0]
        np.testing.assert_array_equal(out, [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
        np.testing.assert_array_equal(np_conv2d(x, k, np.array([1.0]), "VALID")[0, :, :, 0], [[10.0]])
        np.testing.assert_array_equal(
            np_max_pool_2x2(np.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0], [[5, 7], [13, 15]]
        )


# --- MLP and the registry -----------------------------------------------------------------------


class MLPTest(chex.TestCase):
    def test_shapes_and_count(self):
        model = MLP()
        params = _randomize(_init(model, (28, 28, 1)), 0)
        # 784*256+256 + 256*128+128 + 128*10+10
        self.assertEqual(count_params(params), 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10)
        chex.assert_shape(jax.jit(model.apply)({"params": params}, jnp.zeros((4, 28, 28, 1))), (4, 10))
        small = MLP(hidden=(7,), num_classes=3)
        p = _randomize(_init(small, (5, 6, 2)), 1)
        chex.assert_shape(p["Dense_0"]["kernel"], (60, 7))
        chex.assert_shape(jax.jit(small.apply)({"params": p}, jnp.zeros((2, 5, 6, 2))), (2, 3))

    def test_forward_matches_numpy(self):
        model = MLP(hidden=(16, 8), num_classes=4)
        params = _randomize(_init(model, (6, 6, 2)), seed=7)
        x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 6, 6, 2)), jnp.float32)
        expected = np_mlp(params, x, layers=3)
        chex.assert_trees_all_close(
            jax.jit(model.apply)({"params": params}, x), expected.astype(np.float32), rtol=1e-4, atol=1e-5
        )

    def test_make_model(self):
        self.assertEqual(set(MODELS), {"lenet5", "mlp", "resnet20", "transformer"})
        self.assertIsInstance(make_model("mlp"), MLP)
        self.assertIsInstance(make_model("lenet5"), LeNet5)
        self.assertIsInstance(make_model("resnet20"), ResNet20)
        self.assertEqual(make_model("mlp", num_classes=7).num_classes, 7)
        self.assertEqual(make_model("resnet20", num_classes=7).num_classes, 7)
        with pytest.raises(ValueError, match=r"unknown model 'resnet'.*lenet5.*mlp.*resnet20"):
            make_model("resnet")


# --- ResNet-20 ----------------------------------------------------------------------------------


class ResNet20Test(chex.TestCase):
    def test_parameter_count(self):
        # Convolutions have no bias; each GroupNorm has a scale and a bias per channel (2 * c).
        # stem:    3*3*3*16 = 432                                      + GN 2*16 =     32 ->    464
        # stage 1: 6 convs 3*3*16*16 = 2304, each + GN 32: 6 * 2336                    ->  14016
        # stage 2: 3*3*16*32 = 4608 + 64; 5 convs 3*3*32*32 = 9216, each + 64: 5 * 9280;
        #          projection 1*1*16*32 = 512 + 64: 4672 + 46400 + 576                 ->  51648
        # stage 3: 3*3*32*64 = 18432 + 128; 5 convs 3*3*64*64 = 36864, each + 128: 5 * 36992;
        #          projection 1*1*32*64 = 2048 + 128: 18560 + 184960 + 2176            -> 205696
        # dense:   64*10 + 10                                                          ->    650
        expected = 464 + 14016 + 51648 + 205696 + 650
        self.assertEqual(expected, 272474)
        params = _init(ResNet20(), (32, 32, 3))
        self.assertEqual(count_params(params), expected)
        chex.assert_shape(params["conv"]["kernel"], (3, 3, 3, 16))
        chex.assert_shape(params["stage2_block1"]["proj"]["kernel"], (1, 1, 16, 32))
        chex.assert_shape(params["stage3_block3"]["conv2"]["kernel"], (3, 3, 64, 64))
        chex.assert_shape(params["stage3_block3"]["norm2"]["scale"], (64,))
        chex.assert_shape(params["head"]["kernel"], (64, 10))
        self.assertNotIn("proj", params["stage1_block1"])  # identity shortcut where shapes agree
        self.assertNotIn("proj", params["stage2_block2"])
        # The spatial size and channel count only change the stem's kernel.
        self.assertEqual(count_params(_init(ResNet20(), (28, 28, 1))), expected - 3 * 3 * 2 * 16)

    def test_output_shapes(self):
        model = ResNet20(num_classes=3)
        params = _randomize(_init(model, (10, 10, 1)), 0)
        apply = jax.jit(model.apply)
        out = apply({"params": params}, jnp.ones((5, 10, 10, 1)))
        chex.assert_shape(out, (5, 3))
        chex.assert_type(out, jnp.float32)
        chex.assert_shape(apply({"params": params}, jnp.ones((10, 10, 1))), (3,))  # no batch axis
        chex.assert_shape(apply({"params": params}, jnp.ones((2, 4, 10, 10, 1))), (2, 4, 3))  # two
        # Odd sizes: 7 -> 4 -> 2 after the two stride-2 stages, like a padded stride-2 conv in PyTorch.
        chex.assert_shape(apply({"params": params}, jnp.ones((2, 7, 7, 1))), (2, 3))
        with pytest.raises(ValueError, match="H, W, C"):
            model.apply({"params": params}, jnp.ones((10, 10)))

    def test_per_sample_normalization(self):
        # GroupNorm: a sample's logits do not depend on the rest of its batch (BatchNorm's would).
        model = ResNet20()
        params = _randomize(_init(model, (8, 8, 3)), 1)
        x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 8, 8, 3)), jnp.float32)
        apply = jax.jit(model.apply)
        full = apply({"params": params}, x)
        self.assertGreater(float(jnp.abs(full[0] - full[1]).max()), 1e-3)
        chex.assert_trees_all_close(apply({"params": params}, x[:1] + 0 * x[1:2]), full[:1], atol=1e-5)
        chex.assert_trees_all_close(apply({"params": params}, x.at[1:].set(0.0))[0], full[0], atol=1e-5)

    def test_jitted_grad_step(self):
        model = ResNet20(num_classes=4)
        params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.uniform(size=(8, 8, 8, 1)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 4, 8))

        def loss(p):
            logits = model.apply({"params": p}, x)
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()

        @jax.jit
        def step(p):
            value, g = jax.value_and_grad(loss)(p)
            return value, g, jax.tree.map(lambda a, b: a - 0.01 * b, p, g)

        l0, grads, p1 = step(params)
        chex.assert_trees_all_equal_shapes(grads, params)
        chex.assert_tree_all_finite(grads)
        # Every parameter gets a gradient (projection, norms and head included).
        self.assertTrue(all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads)))
        self.assertTrue(np.isfinite(float(l0)))
        losses = [float(l0)]
        for _ in range(3):
            value, _, p1 = step(p1)
            losses.append(float(value))
        self.assertLess(losses[-1], losses[0])  # a few small steps on one batch lower its loss
