"""Tests for asgd_jax.sandblaster: the load-balancing schedule with backup tasks, and the L-BFGS coordinator.

Independent references: schedules worked out by hand (2-3 replicas of different speeds, 5-7 portions:
load balancing, a straggler that backups rescue, a backup that loses, the fixed 1/N split); a plain-Python
float64 event simulation of the rules written from the method description, on random integer-valued
cases (exact in float32, ties included); scipy.optimize and the least-squares closed form for the
coordinator's optimum; an evaluation counter called from inside the loss for the number of evaluations;
the time per iteration recomputed as evaluations x makespan + vector_op_time x (4 min(k, m) + 5 + 2 e).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from asgd_jax import sandblaster as sb
from asgd_jax import timing
from asgd_jax.data import make_dataset

# --- reference: a plain-Python event simulation of the schedule ---------------------------------------


def ref_schedule(T, E=None, backups=True):
    """Replicas go idle one at a time (earliest first, ties lowest id); an idle replica takes the next
    portion, else (with backups) a copy of the unfinished portion of latest expected finish (ties: lowest
    portion id), else stops. A copy wins if strictly earlier; losers stop when the winner arrives."""
    T = [[float(v) for v in row] for row in np.asarray(T)]
    E = T if E is None else [[float(v) for v in row] for row in np.asarray(E)]
    P, N = len(T), len(T[0])
    first, winner, expect = [float("inf")] * P, [-1] * P, [float("inf")] * P
    job = [None] * N          # (portion, own finish) of each replica's current copy
    stopped = [False] * N
    handed, issued = 0, 0

    def idle_time(r):
        if stopped[r]:
            return float("inf")
        if job[r] is None:
            return 0.0
        p, end = job[r]
        return min(end, first[p])

    while not all(stopped):
        r = min(range(N), key=lambda i: (idle_time(i), i))
        now = idle_time(r)
        if handed < P:
            p, handed = handed, handed + 1
        else:
            open_portions = [q for q in range(P) if first[q] > now]
            if not backups or not open_portions:
                stopped[r] = True
                continue
            p = max(open_portions, key=lambda q: (expect[q], -q))
            issued += 1
        end = now + T[p][r]
        job[r] = (p, end)
        if end < first[p]:
            first[p], winner[p] = end, r
        expect[p] = min(expect[p], now + E[p][r])
    return max(first), first, winner, issued


def ref_fixed_split(T):
    T = np.asarray(T, np.float64)
    groups = np.array_split(np.arange(T.shape[0]), T.shape[1])
    return max(T[g, r].sum() for r, g in enumerate(groups))


def times_of(work, speeds):
    return np.outer(np.asarray(work, np.float64), np.asarray(speeds, np.float64))


def check(s, makespan, winner, backups, finish=None):
    assert float(s.makespan) == makespan
    assert s.winner.tolist() == winner
    assert int(s.backups) == backups
    if finish is not None:
        assert s.finish.tolist() == finish


# --- schedules by hand --------------------------------------------------------------------------------


def test_two_replicas_load_balancing_by_hand():
    """Speeds 1 and 2, five unit portions. r0: p0 [0,1], p2 [1,2], p3 [2,3]; r1: p1 [0,2], p4 [2,4]
    (at 2 both are free: r0 first). With backups r0, idle at 3, copies p4 (done 4, not earlier): it loses."""
    work, speeds = jnp.ones(5), jnp.array([1.0, 2.0])
    check(sb.schedule(work, speeds, backups=False), 4.0, [0, 1, 0, 0, 1], 0, [1.0, 2.0, 2.0, 3.0, 4.0])
    check(sb.schedule(work, speeds), 4.0, [0, 1, 0, 0, 1], 1, [1.0, 2.0, 2.0, 3.0, 4.0])
    assert float(sb.fixed_split(work, speeds)) == 4.0     # r0: p0-p2 (3), r1: p3-p4 (2 x 2)


def test_straggler_rescued_by_a_backup_by_hand():
    """Speeds 1, 1, 10, six unit portions: r2 holds p2 until 10. With backups, r1 (idle at 2, all handed
    out) copies p2, the latest of the unfinished p2 (10) and p5 (3): done at 3; makespan 10 -> 3.
    The fixed 1/N split gives r2 two portions: 20."""
    work, speeds = jnp.ones(6), jnp.array([1.0, 1.0, 10.0])
    check(sb.schedule(work, speeds, backups=False), 10.0, [0, 1, 2, 0, 1, 0], 0, [1.0, 1.0, 10.0, 2.0, 2.0, 3.0])
    check(sb.schedule(work, speeds), 3.0, [0, 1, 1, 0, 1, 0], 1, [1.0, 1.0, 3.0, 2.0, 2.0, 3.0])
    assert float(sb.fixed_split(work, speeds)) == 20.0


def test_three_replicas_uneven_work_with_a_losing_backup_by_hand():
    """Speeds 1, 2, 4; work 2, 1, 1, 3, 1, 2, 1. Handing out: t=0 r0 p0 [0,2], r1 p1 [0,2], r2 p2 [0,4];
    t=2 r0 p3 [2,5], r1 p4 [2,4]; t=4 r1 p5 [4,8], r2 p6 [4,8]. Backups: t=5 r0 copies p5 (tie with p6 at
    8: lower id) done 7, wins, and r1 is freed at 7; t=7 r0 copies p6 (done 8, loses), r1 copies p6 (done
    9, loses); everything is done at 8: three backups."""
    work, speeds = jnp.array([2.0, 1.0, 1.0, 3.0, 1.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 4.0])
    check(sb.schedule(work, speeds, backups=False), 8.0, [0, 1, 2, 0, 1, 1, 2], 0,
          [2.0, 2.0, 4.0, 5.0, 4.0, 8.0, 8.0])
    check(sb.schedule(work, speeds), 8.0, [0, 1, 2, 0, 1, 0, 2], 3, [2.0, 2.0, 4.0, 5.0, 4.0, 7.0, 8.0])
    # Fixed split: r0 p0-p2 (4), r1 p3-p4 (4 x 2 = 8), r2 p5-p6 (3 x 4 = 12).
    assert float(sb.fixed_split(work, speeds)) == 12.0


def test_reference_simulation_agrees_with_the_hand_worked_cases():
    assert ref_schedule(times_of([1, 1, 1, 1, 1, 1], [1, 1, 10]))[::2] == (3.0, [0, 1, 1, 0, 1, 0])
    assert ref_schedule(times_of([2, 1, 1, 3, 1, 2, 1], [1, 2, 4]))[3] == 3
    assert ref_fixed_split(times_of([2, 1, 1, 3, 1, 2, 1], [1, 2, 4])) == 12.0


def test_timing_models_and_expected_times():
    """A fixed per-worker model equals the speed factors; stragglers' expected times steer the backups."""
    work = jnp.array([1.0, 1.0, 2.0, 1.0, 1.0])
    a = sb.schedule(work, jnp.array([1.0, 3.0]))
    b = sb.schedule(work, timing.per_worker(timing.fixed(1.0), jnp.array([1.0, 3.0])), replicas=2)
    assert a.winner.tolist() == b.winner.tolist() and float(a.makespan) == float(b.makespan)
    model = timing.stragglers(timing.exponential(1.0), fraction=0.5, slowdown=5.0)
    key = jax.random.key(3)
    t, e = sb.portion_times(work, model, replicas=2, key=key)
    np.testing.assert_allclose(np.asarray(e), np.outer(np.asarray(work), [1.0, 5.0]), rtol=1e-6)
    s = sb.schedule(work, model, replicas=2, key=key)
    ms, first, winner, issued = ref_schedule(np.asarray(t), np.asarray(e))
    assert float(s.makespan) == pytest.approx(ms, rel=1e-6) and s.winner.tolist() == winner
    assert int(s.backups) == issued


@pytest.mark.parametrize("use_backups", [False, True])
def test_random_cases_against_the_reference(use_backups):
    """Random integer times (exact in float32, with ties), 1-4 replicas, N-12 portions, the coordinator's
    expected times either exact or another random matrix; jit(vmap) over a batch of same-shape cases."""
    rng = np.random.default_rng(0)
    for _ in range(14):
        n = int(rng.integers(1, 5))
        p = int(rng.integers(n, 13))
        T = rng.integers(1, 8, (p, n)).astype(np.float32)
        E = T if rng.random() < 0.5 else rng.integers(1, 8, (p, n)).astype(np.float32)
        s = sb.schedule_times(T, E, backups=use_backups)
        ms, first, winner, issued = ref_schedule(T, E, use_backups)
        assert (float(s.makespan), s.finish.tolist(), s.winner.tolist(), int(s.backups)) == (
            ms, first, winner, issued)
        assert float(sb.fixed_split(jnp.ones(p), jnp.ones(n))) == ref_fixed_split(np.ones((p, n)))
    Ts = rng.integers(1, 8, (16, 8, 3)).astype(np.float32)
    out = jax.jit(jax.vmap(lambda t: sb.schedule_times(t, backups=use_backups)))(jnp.asarray(Ts))
    for i, T in enumerate(Ts):
        ms, first, winner, issued = ref_schedule(T, None, use_backups)
        assert (float(out.makespan[i]), out.winner[i].tolist(), int(out.backups[i])) == (ms, winner, issued)


def test_backups_never_hurt_and_fixed_split_with_speeds():
    rng = np.random.default_rng(1)
    Ts = jnp.asarray(rng.uniform(0.5, 3.0, (64, 12, 3)), jnp.float32)
    with_b = jax.vmap(sb.schedule_times)(Ts)
    without = jax.vmap(lambda t: sb.schedule_times(t, backups=False))(Ts)
    assert np.all(np.asarray(with_b.makespan) <= np.asarray(without.makespan))
    assert np.any(np.asarray(with_b.makespan) < np.asarray(without.makespan))
    for _ in range(5):
        n, p = int(rng.integers(2, 5)), int(rng.integers(8, 20))
        speeds = rng.uniform(0.5, 3.0, n)
        assert float(sb.fixed_split(jnp.ones(p), speeds)) == pytest.approx(
            ref_fixed_split(times_of(np.ones(p), speeds)), rel=1e-6)


def test_one_line_errors():
    for call, match in [
        (lambda: sb.schedule(jnp.ones(2), jnp.ones(3)), "at least as many portions as replicas"),
        (lambda: sb.schedule(jnp.array([1.0, 0.0, 1.0]), jnp.ones(2)), "portion work must be > 0"),
        (lambda: sb.schedule(jnp.array([1.0, -1.0]), jnp.ones(2)), "portion work must be > 0"),
        (lambda: sb.schedule(jnp.ones(3), jnp.ones(0)), "replicas must be a Python int >= 1"),
        (lambda: sb.schedule(jnp.ones(3), timing.fixed(1.0), replicas=0), "replicas must be a Python int >= 1"),
        (lambda: sb.schedule(jnp.ones(3), timing.exponential(1.0), replicas=2), "needs key"),
        (lambda: sb.schedule(jnp.ones(3), timing.fixed(1.0)), "needs replicas"),
        (lambda: sb.schedule_times(np.ones((2, 3))), "at least as many portions as replicas"),
        (lambda: sb.portion_work(4, 8), "at most one portion per example"),
        (lambda: sb.cluster(jnp.ones(3), jnp.ones(2), vector_op_time=-1.0), "vector_op_time must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


# --- the L-BFGS coordinator ---------------------------------------------------------------------------


def logistic_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    w_true = rng.normal(size=5)
    y = (rng.random(200) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float32)
    lam = 0.05

    def f64(w):
        z = X.astype(np.float64) @ w
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * lam * w @ w

    def loss(w):
        z = jnp.asarray(X) @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * w @ w

    return f64, loss


def expected_times(evaluations, makespan, vector_op_time, memory):
    e = np.asarray(evaluations)
    k = np.arange(len(e))
    return e * makespan + vector_op_time * (4 * np.minimum(k, memory) + 5 + 2 * e)


def test_lbfgs_reaches_the_logistic_optimum_and_its_time_is_evaluations_x_makespan():
    """Regularised logistic regression: the coordinator's optimum is scipy's; every loss call is counted
    (a callback in the loss) and equals the evaluations; time = e x makespan + op time x ops."""
    f64, loss = logistic_problem()
    opt = scipy.optimize.minimize(f64, np.zeros(5), method="BFGS", options={"gtol": 1e-10})
    calls = []

    def counted(w):
        jax.debug.callback(lambda: calls.append(1))
        return loss(w)

    work, speeds = jnp.array([2.0, 1.0, 1.0, 3.0, 1.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 4.0])
    system = sb.cluster(work, speeds, vector_op_time=0.01)
    w, rec = jax.jit(lambda: sb.minimize(counted, jnp.zeros(5), system, 25, memory_size=4))()
    np.testing.assert_allclose(np.asarray(w), opt.x, atol=2e-4)
    assert len(calls) == int(rec.evaluations.sum())
    assert int(rec.evaluations[0]) >= 2 and int(rec.evaluations.min()) >= 1
    np.testing.assert_allclose(np.asarray(rec.time), expected_times(rec.evaluations, 8.0, 0.01, 4), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rec.compute_time), np.asarray(rec.evaluations) * 8.0, rtol=1e-6)
    assert np.asarray(rec.backups).tolist() == (np.asarray(rec.evaluations) * 3).tolist()


def test_lbfgs_least_squares_closed_form_and_the_straggler_makespan():
    rng = np.random.default_rng(2)
    A, b = rng.normal(size=(50, 4)), rng.normal(size=50)
    w_star = np.linalg.lstsq(A, b, rcond=None)[0]
    loss = lambda w: 0.5 * jnp.mean((jnp.asarray(A, jnp.float32) @ w - jnp.asarray(b, jnp.float32)) ** 2)
    for use_backups, makespan in ((True, 3.0), (False, 10.0)):
        system = sb.cluster(jnp.ones(6), jnp.array([1.0, 1.0, 10.0]), backups=use_backups, vector_op_time=0.0)
        w, rec = sb.minimize(loss, jnp.zeros(4), system, 12)
        np.testing.assert_allclose(np.asarray(w), w_star, atol=1e-4)
        np.testing.assert_allclose(np.asarray(rec.time), np.asarray(rec.evaluations) * makespan, rtol=1e-6)


def test_random_timing_compute_time_within_bounds():
    """Exponential times: every evaluation takes a positive time; separate evaluations draw separately."""
    _, loss = logistic_problem()
    system = sb.cluster(jnp.ones(8) / 8, timing.exponential(1.0), 4)
    _, rec = sb.minimize(loss, jnp.zeros(5), system, 2, key=1, max_linesearch_steps=8)
    t, e = np.asarray(rec.compute_time), np.asarray(rec.evaluations)
    assert np.all(t > 0) and np.all(e >= 1)
    a, b = system.evaluation_times(jax.random.key(5), 3)
    assert a.shape == (3,) and len(set(np.asarray(a).tolist())) == 3   # independent draws


# --- the training entry ---------------------------------------------------------------------------------


def small_dataset():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (64, 28, 28)), rng.integers(0, 10, 64)
    return make_dataset(x, y, x[:32], y[:32], name="noise")


def test_make_sandblaster_train_times_and_vmap():
    """Two configs vmapped: 4 replicas of time 2 per batch, the last 4x slower (stragglers) or not; 8
    portions of 1/8. Each clock advances by e x (the reference simulation's makespan) + op time x ops."""
    ds = small_dataset()
    train = sb.make_sandblaster_train("mlp", ds, batch_size=32, portions=8, replicas=4, iterations=3)
    hps = {"time_mean": jnp.array([2.0, 2.0]), "straggler_fraction": jnp.array([0.25, 0.25]),
           "straggler_slowdown": jnp.array([4.0, 1.0]), "vector_op_time": jnp.array([0.001, 0.002])}
    m = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 2), hps)
    for i, (speeds, op) in enumerate((([2.0, 2.0, 2.0, 8.0], 0.001), ([2.0] * 4, 0.002))):
        makespan = ref_schedule(times_of(np.full(8, 1 / 8), speeds))[0]
        per = np.diff(np.concatenate([[0.0], np.asarray(m["sim_time"][i])]))
        np.testing.assert_allclose(per, expected_times(m["evaluations"][i], makespan, op, 10), rtol=1e-5)
    assert m["test_accuracy"].shape == (2, 3) and not bool(m["diverged"].any())
    assert np.asarray(m["examples"]).tolist() == (np.cumsum(m["evaluations"], axis=1) * 32).tolist()


def test_full_batch_training_decreases_the_loss_and_reuses_the_gradient():
    ds = small_dataset()
    train = sb.make_sandblaster_train("mlp", ds, batch_size=64, portions=8, replicas=2, iterations=6)
    m = jax.jit(train)(jax.random.key(0), {})
    loss = np.asarray(m["train_loss"])
    assert loss[-1] < loss[0] and np.all(np.diff(loss) <= 1e-6)   # line search: a monotone decrease
    e = np.asarray(m["evaluations"])
    assert e[0] >= 2 and np.all(e >= 1)


def test_make_sandblaster_train_errors():
    ds = small_dataset()
    with pytest.raises(ValueError, match="at least as many portions as replicas"):
        sb.make_sandblaster_train("mlp", ds, batch_size=32, portions=2, replicas=4, iterations=2)
    with pytest.raises(ValueError, match="unknown timing"):
        sb.make_sandblaster_train("mlp", ds, batch_size=32, portions=8, replicas=4, iterations=2, timing="x")
    train = sb.make_sandblaster_train("mlp", ds, batch_size=32, portions=8, replicas=4, iterations=2)
    with pytest.raises(ValueError, match="unknown Sandblaster hyperparameter"):
        train(jax.random.key(0), {"learning_rate": 0.1})
    with pytest.raises(ValueError, match="time_mean must be > 0"):
        train(jax.random.key(0), {"time_mean": 0.0})
