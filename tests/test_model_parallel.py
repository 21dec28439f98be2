"""Model parallelism (asgd_jax.model_parallel): a partitioned MLP on a device mesh, and the step-time model.

Independent references: a float64 NumPy MLP (forward, hand-written backprop of ReLU layers and softmax
cross-entropy, SGD with momentum) for the partitioned runs, which execute in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set before JAX starts); step times
worked by hand and re-derived by a Python loop over every machine's messages; a NumPy Monte Carlo of the
slowest machine and the closed form E[max of 2] = 2 Phi(sigma / sqrt 2).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax import model_parallel as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- for real: 8 host devices in a subprocess ----------------------------------------------------------

_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, optax
    from asgd_jax import MLP, model_parallel as mp

    LR, MOM, STEPS = 0.1, 0.9, 3
    out = {"devices": jax.device_count(), "runs": []}
    for hidden, (reps, parts) in [((16, 12, 8), (1, 8)), ((16, 12, 8), (2, 4)), ((16, 8), (4, 2)),
                                  ((16, 8), (8, 1))]:
        rng = np.random.default_rng(len(hidden) * 10 + parts)
        model = MLP(hidden=hidden, num_classes=5)
        inits = [model.init(jax.random.key(r), jnp.zeros((1, 3, 2, 1)))["params"] for r in range(reps)]
        params = jax.tree.map(lambda *a: jnp.stack(a), *inits)          # every replica its own model
        xs = rng.normal(size=(STEPS, reps, 6, 3, 2, 1)).astype(np.float32)
        ys = rng.integers(0, 5, (STEPS, reps, 6)).astype(np.int32)
        mesh = mp.make_mesh(reps, parts)
        placed = mp.shard_params(params, mesh)
        shard = placed["Dense_0"]["kernel"].addressable_shards[0].data.shape
        logits = mp.forward(placed, xs[0], mesh)
        loss, grads = mp.loss_and_grad(placed, xs[0], ys[0], mesh)
        run = {"hidden": hidden, "reps": reps, "parts": parts, "shard": list(shard),
               "params": jax.tree.map(lambda a: np.asarray(a).tolist(), params),
               "x": xs.tolist(), "y": ys.tolist(), "logits": np.asarray(logits).tolist(),
               "loss": np.asarray(loss).tolist(), "grads": jax.tree.map(lambda a: np.asarray(a).tolist(), grads)}
        opt = optax.sgd(LR, momentum=MOM)
        for average in (False, True):
            step = mp.train_step(opt, mesh, average=average)
            p, s, losses = placed, jax.vmap(opt.init)(placed), []
            for t in range(STEPS):
                p, s, l = step(p, s, xs[t], ys[t])
                losses.append(np.asarray(l).tolist())
            run[f"trained_{average}"] = jax.tree.map(lambda a: np.asarray(a).tolist(), p)
            run[f"losses_{average}"] = losses
            run[f"out_shard_{average}"] = list(p["Dense_1"]["kernel"].addressable_shards[0].data.shape)
        out["runs"].append(run)

    errors = []
    for bad in (lambda: mp.make_mesh(3, 3),
                lambda: mp.forward(mp.replicate(MLP(hidden=(12,), num_classes=2).init(
                    jax.random.key(0), jnp.zeros((1, 2, 2, 1)))["params"], 1), jnp.zeros((1, 4, 2, 2, 1)),
                    mp.make_mesh(1, 8))):
        try:
            bad()
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    out["errors"] = errors
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def mesh_runs():
    env = dict(os.environ)  # with the test session's XLA_FLAGS (tests/conftest.py); the script adds its own
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _layers(params):
    return [(np.asarray(params[f"Dense_{i}"]["kernel"], np.float64), np.asarray(params[f"Dense_{i}"]["bias"],
                                                                                  np.float64))
            for i in range(len(params))]


def np_loss_grad(layers, x, y):
    """float64 forward and backprop of one replica: ReLU hidden layers, mean softmax cross-entropy."""
    hs = [np.asarray(x, np.float64).reshape(len(x), -1)]
    for i, (w, b) in enumerate(layers):
        z = hs[-1] @ w + b
        hs.append(np.maximum(z, 0.0) if i + 1 < len(layers) else z)
    logits = hs[-1]
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    d = np.exp(logp)
    d[np.arange(n), y] -= 1.0
    d /= n
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        w, _ = layers[i]
        grads[i] = (hs[i].T @ d, d.sum(0))
        if i:
            d = (d @ w.T) * (hs[i] > 0)
    return logits, loss, grads


def np_train(layers_per_replica, xs, ys, lr, mom, average):
    """SGD with momentum (trace = g + mom * trace; w -= lr * trace), every replica on its own data."""
    params = [[(w.copy(), b.copy()) for w, b in layers] for layers in layers_per_replica]
    traces = [[(np.zeros_like(w), np.zeros_like(b)) for w, b in layers] for layers in params]
    losses = []
    for t in range(len(xs)):
        res = [np_loss_grad(params[r], xs[t][r], ys[t][r]) for r in range(len(params))]
        losses.append([r[1] for r in res])
        grads = [r[2] for r in res]
        if average:
            mean = [tuple(np.mean([g[i][k] for g in grads], 0) for k in range(2)) for i in range(len(grads[0]))]
            grads = [mean] * len(params)
        for r in range(len(params)):
            traces[r] = [(gw + mom * tw, gb + mom * tb) for (gw, gb), (tw, tb) in zip(grads[r], traces[r])]
            params[r] = [(w - lr * tw, b - lr * tb) for (w, b), (tw, tb) in zip(params[r], traces[r])]
    return params, losses


def _replica(tree, r):
    return {k: {n: np.asarray(v[n])[r] for n in v} for k, v in tree.items()}


TOL = dict(rtol=2e-4, atol=2e-5)


def test_partitioned_forward_and_gradient_equal_the_unpartitioned_model(mesh_runs):
    assert mesh_runs["devices"] == 8
    for run in mesh_runs["runs"]:
        parts, reps = run["parts"], run["reps"]
        # every device holds only its slice of the column layer: [1 replica, inputs, 16 / parts]
        assert run["shard"] == [1, 6, 16 // parts]
        for r in range(reps):
            layers = _layers(_replica(run["params"], r))
            logits, loss, grads = np_loss_grad(layers, np.asarray(run["x"][0][r]), np.asarray(run["y"][0][r]))
            np.testing.assert_allclose(run["logits"][r], logits, **TOL)
            np.testing.assert_allclose(run["loss"][r], loss, **TOL)
            got = _layers(_replica(run["grads"], r))
            for (gw, gb), (rw, rb) in zip(got, grads):
                np.testing.assert_allclose(gw, rw, **TOL)
                np.testing.assert_allclose(gb, rb, **TOL)


@pytest.mark.parametrize("average", [False, True])
def test_partitioned_training_steps_equal_the_unpartitioned_model(mesh_runs, average):
    for run in mesh_runs["runs"]:
        reps = run["reps"]
        start = [_layers(_replica(run["params"], r)) for r in range(reps)]
        ref, losses = np_train(start, np.asarray(run["x"]), np.asarray(run["y"]), 0.1, 0.9, average)
        np.testing.assert_allclose(run[f"losses_{average}"], losses, **TOL)
        for r in range(reps):
            for (w, b), (rw, rb) in zip(_layers(_replica(run[f"trained_{average}"], r)), ref[r]):
                np.testing.assert_allclose(w, rw, **TOL)
                np.testing.assert_allclose(b, rb, **TOL)
        # the trained row layer stays split: [1 replica, 16 / parts inputs, all outputs] on every device
        assert run[f"out_shard_{average}"] == [1, 16 // run["parts"], run["hidden"][1]]
        if reps > 1:   # the replicas really differ (or, averaged, started apart and stayed apart)
            assert not np.allclose(run[f"trained_{average}"]["Dense_0"]["kernel"][0],
                                   run[f"trained_{average}"]["Dense_0"]["kernel"][1])


def test_mesh_errors_are_one_line(mesh_runs):
    too_many, not_divisible = mesh_runs["errors"]
    assert too_many is not None and "needs 9 devices but 8" in too_many and "\n" not in too_many
    assert not_divisible is not None and "12 units, not divisible by 8" in not_divisible


def test_errors_on_one_device():
    from asgd_jax import MLP
    params = MLP(hidden=(4,), num_classes=2).init(jax.random.key(0), jnp.zeros((1, 1, 2, 1)))["params"]
    with pytest.raises(ValueError, match="devices but"):
        mp.make_mesh(1, jax.device_count() + 1)
    mesh = mp.make_mesh(1, 1)
    with pytest.raises(ValueError, match="leading replica axis"):
        mp.forward(params, jnp.zeros((1, 3, 1, 2, 1)), mesh)
    with pytest.raises(ValueError, match="x must have a leading replica axis of 2"):
        mp.forward(mp.replicate(params, 2), jnp.zeros((1, 3, 1, 2, 1)), mesh)
    with pytest.raises(ValueError, match="asgd_jax.MLP's params"):
        mp.partition_specs({"w": jnp.zeros(3)})


# --- in time ---------------------------------------------------------------------------------------------


def _quiet(flops_per_second, latency, bandwidth, overhead):
    return mp.cluster(flops_per_second, latency=latency, bandwidth=bandwidth, overhead=overhead, sigma=0.0)


def test_fully_connected_step_times_by_hand():
    # widths 3, 8, 4, 2; batch 2; 1 byte a value: weights 24 + 32 + 8 = 64, FLOPs 6 * 64 * 2 = 768.
    # 96 FLOP/s -> compute 8 / p; a message 2 * 0.25 + bytes / 8; overhead 1.
    # Hidden activations 8 * 2 = 16 and 4 * 2 = 8 bytes, each machine sends its 1/p to p - 1 others, 2 ways.
    m = mp.fully_connected([3, 8, 4, 2], batch=2, bytes_per_value=1)
    c = _quiet(96.0, 0.25, 8.0, 1.0)
    # p=1: 8 + 1.  p=2: 4 + 2 * 1 * ((0.5 + 8/8) + (0.5 + 4/8)) + 1 = 10.
    # p=4: 2 + 2 * 3 * ((0.5 + 4/8) + (0.5 + 2/8)) + 1 = 13.5.
    got = [float(mp.step_time(m, p, c)) for p in (1, 2, 4)]
    np.testing.assert_allclose(got, [9.0, 10.0, 13.5], rtol=1e-6)
    np.testing.assert_allclose(float(mp.speedup(m, 4, c)), 9.0 / 13.5, rtol=1e-6)


def _grid_reference(p, height, width, channels, halo, boundaries, batch, bpv, two_latency, byte_time):
    """Every machine's messages on the most nearly square grid, summed one after another; the slowest wins."""
    rows = max(d for d in range(1, p + 1) if p % d == 0 and d * d <= p)
    cols = p // rows
    worst = 0.0
    for i in range(rows):
        for j in range(cols):
            t = 0.0
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                if 0 <= i + di < rows and 0 <= j + dj < cols:
                    edge = width / cols if di else height / rows      # a strip along the shared edge
                    t += two_latency + halo * edge * channels * batch * bpv * byte_time
            worst = max(worst, t)
    return 2 * boundaries * worst


def test_locally_connected_step_times_by_hand():
    # 12 x 8 units, 1 -> 2 maps, 3 x 3 fields (halo 1), 3 layers (2 boundaries), batch 1, 1 byte a value:
    # weights 12 * 8 * 2 * 9 * (1 + 2 * 2) = 8640, FLOPs 51840; 5184 FLOP/s -> compute 10 / p.
    m = mp.locally_connected(12, 8, in_channels=1, channels=2, receptive=3, layers=3, batch=1, bytes_per_value=1)
    c = _quiet(5184.0, 0.25, 8.0, 1.0)
    # p=1: 10 + 1.  p=2 (1 x 2): one neighbour beside, strip 1 * 12 * 2 = 24 bytes: 0.5 + 3; 2 * 2 * 3.5 = 14.
    # p=4 (2 x 2): one above/below (1 * 4 * 2 = 8 bytes: 1.5) and one beside (1 * 6 * 2 = 12: 2): 4 * 3.5 = 14.
    got = [float(mp.step_time(m, p, c)) for p in (1, 2, 4)]
    np.testing.assert_allclose(got, [11.0, 5 + 14 + 1.0, 2.5 + 14 + 1.0], rtol=1e-6)
    for p in (3, 6, 8, 9, 12, 16, 24, 36, 96):
        ref = 10.0 / p + _grid_reference(p, 12, 8, 2, 1, 2, 1, 1, 0.5, 1 / 8) + 1.0
        np.testing.assert_allclose(float(mp.step_time(m, p, c)), ref, rtol=1e-5, err_msg=f"p={p}")


def test_figure3_shape_with_the_documented_defaults():
    machines = jnp.arange(1, 65)
    fc = np.asarray(jax.jit(jax.vmap(lambda p: mp.speedup(mp.speech_model(), p)))(machines))
    peak = int(np.argmax(fc)) + 1
    assert 4 <= peak <= 12 and 1.8 < fc.max() < 2.6              # paper: 2.2x at 8 machines
    assert np.all(np.diff(fc[:peak]) > 0) and np.all(np.diff(fc[peak - 1:]) < 0)
    assert fc[-1] < fc.max() * 0.75                                  # and slower beyond

    ps = jnp.array([1, 2, 4, 8, 9, 16, 25, 32, 36, 49, 64, 81])
    lc = np.asarray(jax.vmap(lambda p: mp.speedup(mp.image_model(), p))(ps))
    assert np.all(np.diff(lc) > 0) and lc[-1] > 12                  # paper: > 12x at 81 machines

    # communication per machine: grows with p (fully connected), shrinks on square grids (locally connected)
    net = mp.cluster().network
    fc_comm = [float(mp.speech_model().communication_time(p, net)) for p in (2, 4, 8, 16, 32)]
    lc_comm = [float(mp.image_model().communication_time(p, net)) for p in (9, 16, 25, 36, 49, 64, 81)]
    assert np.all(np.diff(fc_comm) > 0) and np.all(np.diff(lc_comm) < 0)


@pytest.mark.parametrize("sigma", [0.2, 0.5])
def test_expected_max_against_monte_carlo_and_closed_form(sigma):
    # E[max(X1, X2)] = 2 E[X1 1{Z1 > Z2}] = 2 P(Z1 + sigma > Z2) = 2 Phi(sigma / sqrt 2) = 1 + erf(sigma / 2)
    np.testing.assert_allclose(float(mp.expected_max(sigma, 2)), 1 + math.erf(sigma / 2), rtol=1e-5)
    rng = np.random.default_rng(0)
    for p in (2, 8, 81):
        x = np.exp(sigma * rng.standard_normal((100_000, p)) - sigma ** 2 / 2).max(1)
        se = x.std() / math.sqrt(len(x))
        assert abs(float(mp.expected_max(sigma, p)) - x.mean()) < 4 * se


def test_variance_makes_steps_longer_and_samples_average_to_the_expectation():
    m = mp.speech_model()
    quiet, noisy = mp.cluster(sigma=0.0), mp.cluster(sigma=0.3)
    for p in (2, 8, 32):
        assert float(mp.step_time(m, p, noisy)) > float(mp.step_time(m, p, quiet))
    assert float(mp.step_time(m, 1, noisy)) == pytest.approx(float(mp.step_time(m, 1, quiet)), rel=1e-6)
    # the expected step time against a NumPy Monte Carlo of the slowest of 8 machines
    compute = float(m.flops) / 5e10 / 8
    rest = float(mp.step_time(m, 8, quiet)) - compute
    rng = np.random.default_rng(1)
    mc = compute * np.exp(0.3 * rng.standard_normal((100_000, 8)) - 0.045).max(1) + rest
    assert abs(float(mp.step_time(m, 8, noisy)) - mc.mean()) < 4 * mc.std() / math.sqrt(len(mc))
    # sampled step times (a key) average to the expected one; traced machines need a static bound
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.vmap(lambda k: mp.step_time(m, 8, noisy, key=k))(keys)
    assert abs(float(draws.mean()) - float(mp.step_time(m, 8, noisy))) < 4 * float(draws.std()) / math.sqrt(4000)
    sampled = jax.vmap(lambda p, k: mp.speedup(m, p, noisy, key=k, max_machines=16))(jnp.arange(1, 17), keys[:16])
    assert sampled.shape == (16,) and bool(jnp.all(sampled > 0))
    with pytest.raises(ValueError, match="static bound"):
        jax.vmap(lambda p: mp.step_time(m, p, noisy, key=keys[0]))(jnp.arange(1, 3))


def test_time_model_errors_are_one_line():
    m = mp.speech_model()
    for bad in (0, 1.5, np.array([2, 3])):
        with pytest.raises(ValueError, match="machines must be an integer"):
            mp.step_time(m, bad)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mp.cluster(bandwidth=0.0)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        mp.cluster(sigma=-0.1)
    with pytest.raises(ValueError, match="widths must list"):
        mp.fully_connected([10])
    with pytest.raises(ValueError, match="shape must be"):
        mp.step_time("mlp", 2)
