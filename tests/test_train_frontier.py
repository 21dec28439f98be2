"""The newest methods by name in a training config: TrainConfig(rules=("malenia" | "ringleader" | "rescaled" |
"stop" | "fastest", ...)) and TrainConfig(server_rule="mindflayer").

Each system is built exactly as the Trainer builds it (:func:`asgd_jax.train.make_optimizer` from a config and
its hyperparameters, fixed per-worker times through ``worker_times``) and driven on the heterogeneous quadratic
of test_simulator, against the float64 NumPy event simulations of test_frontier_methods (written from the
method descriptions, not from the library). Then each runs one epoch through the Trainer on label-split data,
and bad configs give one-line errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgd_jax.data import make_dataset
from asgd_jax.train import TrainConfig, Trainer, make_optimizer, make_train, normalize_hparams

from test_frontier_methods import LR, TIMES4, arrivals_of, drop_above, malenia_ref, plain, reference, ringleader_ref
from test_simulator import run


def _system(rules=(), server_rule="async", times=TIMES4, **hp):
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=len(times), rules=rules,
                      server_rule=server_rule, worker_times=tuple(times))
    hp = normalize_hparams("sgd", {"learning_rate": LR, "momentum": 0.0, "workers": len(times), **hp},
                           config=cfg)
    return make_optimizer("sgd", hp, 0, cfg)


def _check(tx, times, calls, server, **kwargs):
    _, s, tr = run(tx, calls)
    traj, arrivals = reference(times, calls, server, **kwargs)
    assert arrivals_of(tr) == arrivals
    np.testing.assert_allclose(tr["w"], traj, rtol=2e-5, atol=2e-6)
    return s, tr


def test_malenia_by_name_matches_the_reference():
    times = [1.0, 1.5, 4.0]
    s, _ = _check(_system(("malenia",), times=times, malenia_batch=6.0), times, 60, malenia_ref(6.0))
    assert int(s.version) > 3 and int(s.discarded) > 0


def test_ringleader_by_name_matches_the_reference():
    s, tr = _check(_system(("ringleader",)), TIMES4, 60, ringleader_ref())
    assert int(s.discarded) == 0 and tr["staleness"].max() <= 2 * 4 - 2


def test_rescaled_by_name_matches_the_reference():
    hmean = len(TIMES4) / sum(1 / t for t in TIMES4)
    _check(_system(("rescaled",)), TIMES4, 40, lambda g, worker, tau, n: g * TIMES4[worker] / hmean)


def test_ringmaster_stops_by_name_match_the_reference():
    s, tr = _check(_system(("drop", "stop"), max_staleness=2), TIMES4, 60, drop_above(2), stop=2)
    assert tr["staleness"].max() <= 2 and int(s.discarded) == 0


@pytest.mark.parametrize("m", [1, 3])
def test_fastest_by_name_matches_the_reference(m):
    _, tr = _check(_system(("fastest",), fastest=m), TIMES4, 30, plain, m=m)
    assert set(tr["worker"].tolist()) == set(range(m))


def test_fastest_with_the_frontier_path_matches_the_reference():
    """'fastest' also works on the parameter-server path (with 'rescaled' over the m active workers)."""
    m = 3
    hmean = m / sum(1 / t for t in TIMES4[:m])
    _check(_system(("fastest", "rescaled"), fastest=m), TIMES4, 30,
           lambda g, worker, tau, n: g * TIMES4[worker] / hmean, m=m)


def test_mindflayer_by_name_matches_the_reference():
    """Fixed times 1, 2, 3 with budgets 1.5 x the time: every attempt succeeds (p = 1), rounds of 2 attempts per
    worker (test_frontier_methods' reference uses a clock-dependent law; this loop is its fixed-time twin)."""
    times = [1.0, 2.0, 3.0]
    tx = _system(server_rule="mindflayer", times=times, budget=1.5, attempts=2)
    _, s, tr = run(tx, 36)

    w_ref, clock = _mindflayer_fixed(times, [1.5 * t for t in times], [2, 2, 2], 36)
    np.testing.assert_allclose(tr["w"], w_ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(tr["time"], clock)
    assert int(s.discarded) == 0 and int(s.version) == 36 // 6


def _mindflayer_fixed(times, budgets, attempts, calls):
    """MindFlayer's rounds with fixed times (every attempt within budget succeeds): a NumPy loop."""
    from test_simulator import W0, grad_np

    w, now, traj, clock = W0.astype(np.float64), 0.0, [], []
    probs = [1.0 if t <= b else 0.0 for t, b in zip(times, budgets)]
    expected = sum(p * b for p, b in zip(probs, attempts))
    while len(traj) < calls:
        acc, ends = np.zeros_like(w), []
        for i, b in enumerate(attempts):
            t = now
            for _ in range(b):
                if times[i] <= budgets[i]:
                    acc = acc + grad_np(w, i)
                t += min(times[i], budgets[i])
                traj.append(w.copy())
                clock.append(now)
            ends.append(t)
        now = max(ends)
        w = w - LR * acc / expected
        traj[-1], clock[-1] = w.copy(), now
    return np.array(traj[:calls]), np.array(clock[:calls])


def test_mindflayer_budget_below_the_time_discards_attempts():
    """Budget 0.75 x the mean: worker attempts of fixed time never succeed; no step is taken."""
    tx = _system(server_rule="mindflayer", times=[1.0, 2.0], budget=0.75, attempts=1)
    _, s, tr = run(tx, 8)
    assert int(s.version) == 0 and int(s.discarded) == 8
    np.testing.assert_allclose(tr["time"][1::2], 1.5 * np.arange(1, 5))   # each round lasts 0.75 x 2


# --- through the Trainer -----------------------------------------------------------------------------------


@functools.cache
def _dataset():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 120)
    x = rng.uniform(0, 0.5, (120, 6, 6))
    x[np.arange(len(y)), y, y] += 0.5
    return make_dataset(x[:96], y[:96], x[96:], y[96:], name="toy", max_value=1.0, num_classes=4)


@pytest.mark.parametrize("rules, server_rule, hp", [
    (("malenia",), "async", {"malenia_batch": 4.0}),
    (("ringleader",), "async", {}),
    (("rescaled",), "async", {}),
    (("drop", "stop"), "async", {"max_staleness": 1}),
    (("fastest",), "async", {"fastest": 2}),
    ((), "mindflayer", {"budget": 3.0, "attempts": 1}),
], ids=["malenia", "ringleader", "rescaled", "stop", "fastest", "mindflayer"])
def test_trainer_runs_each_rule_on_label_split_data(rules, server_rule, hp):
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=2, system="async", max_workers=4, rules=rules,
                      server_rule=server_rule, data_split="label", worker_times=(1.0, 2.0, 3.0, 4.0))
    hparams = normalize_hparams("sgd", {"learning_rate": 0.1, "workers": 4, **hp}, config=cfg)
    out = jax.jit(make_train(cfg, _dataset()))(jax.random.key(0), hparams)
    assert not bool(np.asarray(out["invalid"]).any()) and not bool(np.asarray(out["diverged"]).any())
    steps = np.asarray(out["server_steps"])
    assert steps[-1] > 0 and np.all(np.diff(np.asarray(out["sim_time"])) > 0)
    used = np.asarray(out["worker_gradients"])[-1]
    if rules == ("fastest",):
        assert used[2:].sum() == 0 and used[:2].sum() > 0
    elif rules and rules[0] in ("malenia", "ringleader", "rescaled"):
        assert (used > 0).all()      # every worker's data reached the server


@pytest.mark.parametrize("cfg, hp, match", [
    (dict(rules=("stop",)), {}, r"rule 'stop' .* needs 'drop'"),
    (dict(rules=("malenia", "drop")), {"malenia_batch": 2, "max_staleness": 0}, r"two server steppers"),
    (dict(rules=("malenia", "ringleader")), {"malenia_batch": 2}, r"two server steppers"),
    (dict(rules=("ringleader",), assignment="shuffle"), {}, r"needs assignment='pure'"),
    (dict(rules=("rescaled",), compensation="dc-c"), {}, r"does not combine"),
    (dict(rules=("malenia",), server_rule="sync"), {"malenia_batch": 2}, r"does not apply to server_rule='sync'"),
    (dict(rules=("malenia",)), {}, r"rule 'malenia' needs the hyperparameter malenia_batch"),
    (dict(rules=("malenia",)), {"malenia_batch": -1.0}, r"malenia_batch must be a positive number"),
    (dict(rules=("fastest",)), {"fastest": 5}, r"fastest must be an integer in \[1, 4\]"),
    (dict(rules=("fastest",)), {"fastest": 2, "initial_workers": 1}, r"drop initial_workers"),
    (dict(server_rule="mindflayer", rules=("clip",)), {"clip_norm": 1.0}, r"takes no server rules"),
    (dict(server_rule="mindflayer"), {"budget": 0.0}, r"budget must be a positive number"),
    (dict(server_rule="mindflayer"), {"attempts": 0}, r"attempts must be an integer >= 1"),
])
def test_bad_frontier_configs_are_one_line_errors(cfg, hp, match):
    with pytest.raises(ValueError, match=match) as e:
        c = TrainConfig(model="mlp", system="async", max_workers=4, **cfg)
        c.validate()
        normalize_hparams("sgd", {"learning_rate": 0.1, "workers": 4, **hp}, config=c)
    assert "\n" not in str(e.value)


def test_traced_out_of_range_values_are_flagged_invalid():
    cfg = TrainConfig(model="mlp", batch_size=8, epochs=1, system="async", max_workers=4, rules=("fastest",))
    train = jax.jit(jax.vmap(make_train(cfg, _dataset())))
    hp = {"learning_rate": jnp.array([0.1, 0.1]), "momentum": jnp.zeros(2), "workers": jnp.array([4, 4]),
          "fastest": jnp.array([2, 0])}
    keys = jax.random.split(jax.random.key(0), 2)
    from asgd_jax.train import with_defaults

    full = {k: jnp.broadcast_to(jnp.asarray(v), (2,)) for k, v in with_defaults("sgd", {**hp}, cfg).items()}
    out = train(keys, full)
    assert np.asarray(out["invalid"])[:, -1].tolist() == [False, True]
