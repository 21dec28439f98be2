"""asgd_jax.problems and the libsvm: data source.

Independent references: the loss and its gradient written again in plain NumPy
(float64, one sample at a time), central finite differences of that NumPy loss,
numbers worked out by hand, and LIBSVM files written by scikit-learn's
``dump_svmlight_file`` or by hand.
"""

from __future__ import annotations

import gzip
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file

from asgd_jax import problems
from experiments import sources

# --- plain NumPy references ------------------------------------------------------------------------------


def np_loss(x, A, b, lam=0.1, w=None):
    """f(x) = (1/m) Σ_k w_k log(1 + exp(-b_k a_k·x)) + λ Σ_j x_j²/(1 + x_j²), one sample at a time."""
    m = A.shape[0]
    w = np.ones(m) if w is None else w
    total = 0.0
    for k in range(m):
        total += w[k] * math.log1p(math.exp(-b[k] * float(A[k] @ x)))
    return total / m + lam * sum(xj * xj / (1 + xj * xj) for xj in x)


def np_grad(x, A, b, lam=0.1, w=None):
    """∇f by the chain rule, one sample at a time: d/dx log(1 + e^{-z}) = -σ(-z) dz/dx, z = b a·x."""
    m, d = A.shape
    w = np.ones(m) if w is None else w
    g = np.zeros(d)
    for k in range(m):
        z = b[k] * float(A[k] @ x)
        g += w[k] * (-1.0 / (1.0 + math.exp(z))) * b[k] * A[k]
    return g / m + lam * np.array([2 * xj / (1 + xj * xj) ** 2 for xj in x])


def random_problem(m=40, d=7, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, d))
    b = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    x = rng.normal(size=d)
    return A, b, x


# --- the loss -------------------------------------------------------------------------------------------


def test_loss_and_gradient_hand_worked_one_sample():
    # a = [1], b = +1, x = [1]: log(1 + e^-1) + 0.1 * 1/2; gradient -σ(-1) + 0.1 * 2 * 1/(1 + 1)^2.
    A, b, x = jnp.array([[1.0]]), jnp.array([1.0]), jnp.array([1.0])
    assert float(problems.logistic_loss(x, A, b)) == pytest.approx(math.log1p(math.exp(-1)) + 0.05, rel=1e-6)
    g = problems.logistic_gradient(x, A, b)
    assert float(g[0]) == pytest.approx(-1 / (1 + math.e) + 0.05, rel=1e-6)
    # at x = 0 the loss is log 2 and the gradient -(1/m) Σ b_k a_k / 2 (σ(0) = 1/2, no regulariser gradient)
    A2, b2 = jnp.array([[1.0, 2.0], [3.0, -1.0]]), jnp.array([1.0, -1.0])
    assert float(problems.logistic_loss(jnp.zeros(2), A2, b2)) == pytest.approx(math.log(2), rel=1e-6)
    chex.assert_trees_all_close(problems.logistic_gradient(jnp.zeros(2), A2, b2), jnp.array([0.5, -0.75]))


def test_regulariser_hand_worked():
    x = jnp.array([1.0, -2.0, 0.0])
    assert float(problems.nonconvex_regulariser(x, 0.1)) == pytest.approx(0.1 * (0.5 + 0.8), rel=1e-6)
    # its gradient 2λx/(1 + x²)²: 0.1 * 2/4 = 0.05 at x = 1; no data term when A has no rows that matter
    g = problems.logistic_gradient(x, jnp.zeros((1, 3)), jnp.ones(1), 0.1)
    chex.assert_trees_all_close(g, jnp.array([0.05, 0.1 * 2 * -2 / 25, 0.0]), atol=1e-7)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_and_gradient_match_numpy(weighted):
    A, b, x = random_problem()
    w = np.random.default_rng(1).uniform(0.2, 3.0, len(b)) if weighted else None
    jw = None if w is None else jnp.asarray(w, jnp.float32)
    f = problems.logistic_loss(jnp.asarray(x, jnp.float32), jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32),
                               0.1, jw)
    g = problems.logistic_gradient(jnp.asarray(x, jnp.float32), jnp.asarray(A, jnp.float32),
                                   jnp.asarray(b, jnp.float32), 0.1, jw)
    assert float(f) == pytest.approx(np_loss(x, A, b, 0.1, w), rel=1e-5)
    np.testing.assert_allclose(np.asarray(g), np_grad(x, A, b, 0.1, w), rtol=1e-4, atol=1e-6)


def test_gradient_matches_finite_differences_and_autodiff():
    A, b, x = random_problem(m=25, d=5, seed=3)
    eps = 1e-6
    fd = np.array([(np_loss(x + eps * e, A, b) - np_loss(x - eps * e, A, b)) / (2 * eps) for e in np.eye(5)])
    np.testing.assert_allclose(np_grad(x, A, b), fd, rtol=1e-6, atol=1e-8)  # the reference itself
    args = (jnp.asarray(x, jnp.float32), jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(np.asarray(problems.logistic_gradient(*args)), fd, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(problems.logistic_gradient(*args), jax.grad(problems.logistic_loss)(*args),
                                rtol=1e-5, atol=1e-6)


def test_loss_is_finite_for_huge_margins_and_jits_and_vmaps():
    A, b = jnp.array([[1.0], [-1.0]]), jnp.array([1.0, 1.0])
    x = jnp.array([1e4])  # margins ±1e4: log(1 + e^1e4) must not overflow
    assert float(problems.logistic_loss(x, A, b, 0.0)) == pytest.approx(1e4 / 2, rel=1e-6)
    assert np.isfinite(np.asarray(problems.logistic_gradient(x, A, b))).all()
    xs = jnp.array([[0.0], [1.0], [2.0]])
    batched = jax.jit(jax.vmap(problems.logistic_gradient, in_axes=(0, None, None)))(xs, A, b)
    chex.assert_trees_all_close(batched[1], problems.logistic_gradient(xs[1], A, b))


# --- F = (1/n) Σ f_i -------------------------------------------------------------------------------------


def test_shard_weights_and_padding_give_the_workers_objectives():
    A, b, x = random_problem(m=23, d=4, seed=5)
    shards = [np.array([0, 1, 2]), np.arange(3, 13), np.arange(13, 23)]  # sizes 3, 10, 10
    w = problems.shard_weights(shards, 23)
    F = np.mean([np_loss(x, A[s], b[s]) for s in shards])
    gF = np.mean([np_grad(x, A[s], b[s]) for s in shards], axis=0)
    assert np_loss(x, A, b, 0.1, w) == pytest.approx(F, rel=1e-6)
    xj, Aj, bj = (jnp.asarray(v, jnp.float32) for v in (x, A, b))
    np.testing.assert_allclose(np.asarray(problems.logistic_gradient(xj, Aj, bj, 0.1, w)), gF, rtol=1e-4, atol=1e-6)
    A_pad, b_pad, w_pad = problems.pad_shards(A.astype(np.float32), b.astype(np.float32), shards)
    assert A_pad.shape == (3, 10, 4) and w_pad.shape == (3, 10)
    for i, s in enumerate(shards):
        gi = problems.logistic_gradient(xj, A_pad[i], b_pad[i], 0.1, w_pad[i])
        np.testing.assert_allclose(np.asarray(gi), np_grad(x, A[s], b[s]), rtol=1e-4, atol=1e-6)
    # equal shards: every weight is 1, F is the plain mean
    np.testing.assert_array_equal(problems.shard_weights(problems.split_contiguous(20, 4), 20), np.ones(20))


def test_shard_checks():
    with pytest.raises(ValueError, match="partition"):
        problems.shard_weights([np.array([0, 1]), np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="at least one sample"):
        problems.pad_shards(np.zeros((2, 1)), np.ones(2), [np.array([0, 1]), np.array([], int)])


# --- synthetic data --------------------------------------------------------------------------------------


def test_synthetic_shapes_blocks_and_determinism():
    A, b, owner = problems.synthetic(1.0, 1.0, workers=5, samples_per_worker=30, dim=12, seed=7)
    assert A.shape == (150, 12) and A.dtype == np.float32 and b.dtype == np.float32
    assert set(np.unique(b).tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(owner, np.repeat(np.arange(5), 30))
    A2, b2, _ = problems.synthetic(1.0, 1.0, workers=5, samples_per_worker=30, dim=12, seed=7)
    np.testing.assert_array_equal(A, A2)
    np.testing.assert_array_equal(b, b2)
    A3, _, _ = problems.synthetic(1.0, 1.0, workers=5, samples_per_worker=30, dim=12, seed=8)
    assert not np.array_equal(A, A3)


def test_synthetic_feature_covariance_is_j_to_the_minus_1_2():
    # Within a worker, a ~ N(v_k, Σ), Σ_jj = j^-1.2: the sample variance of feature j is j^-1.2.
    A, _, owner = problems.synthetic(0.5, 0.5, workers=2, samples_per_worker=20000, dim=6, seed=0)
    for k in range(2):
        var = A[owner == k].astype(np.float64).var(axis=0)
        np.testing.assert_allclose(var, np.arange(1, 7) ** -1.2, rtol=0.05)


def test_synthetic_beta_spreads_the_workers_feature_means():
    # v_k ~ N(B_k 1, I), B_k ~ N(0, β²): a worker's average feature is about B_k, spread β across workers.
    A, _, owner = problems.synthetic(0.0, 3.0, workers=400, samples_per_worker=4, dim=100, seed=1)
    means = np.array([A[owner == k].mean() for k in range(400)])
    assert np.std(means) == pytest.approx(3.0, rel=0.15)
    A0, _, owner0 = problems.synthetic(0.0, 0.0, workers=400, samples_per_worker=4, dim=100, seed=1)
    assert np.std([A0[owner0 == k].mean() for k in range(400)]) < 0.2  # β = 0: only N(0, 1/d) noise


def test_synthetic_label_noise_flips_only_labels_and_unit_norm_only_scales():
    kw = {"workers": 4, "samples_per_worker": 2500, "dim": 10, "seed": 2}
    A, b, _ = problems.synthetic(1.0, 1.0, **kw)
    An, bn, _ = problems.synthetic(1.0, 1.0, label_noise=0.2, **kw)
    np.testing.assert_array_equal(A, An)
    assert np.mean(b != bn) == pytest.approx(0.2, abs=0.02)
    Au, bu, _ = problems.synthetic(1.0, 1.0, unit_norm=True, **kw)
    np.testing.assert_array_equal(b, bu)
    np.testing.assert_allclose(np.linalg.norm(Au, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(Au * np.linalg.norm(A, axis=1, keepdims=True), A, rtol=1e-4, atol=1e-5)
    _, bl, _ = problems.synthetic(1.0, 1.0, labels="logistic", **kw)
    assert set(np.unique(bl).tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -1.0}, "alpha must be a number >= 0"),
        ({"beta": float("nan")}, "beta must be a number >= 0"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"samples_per_worker": [3, 3]}, "2 entries for 3 workers"),
        ({"labels": "softmax"}, "unknown labels 'softmax'"),
        ({"label_noise": 1.5}, "label_noise must be a probability"),
        ({"dim": 0}, "dim must be a positive integer"),
    ],
)
def test_synthetic_bad_input(kwargs, match):
    args = {"alpha": 1.0, "beta": 1.0, "workers": 3, "samples_per_worker": 5, "dim": 4} | kwargs
    with pytest.raises(ValueError, match=match) as e:
        problems.synthetic(**args)
    assert "\n" not in str(e.value)


# --- splits ------------------------------------------------------------------------------------------------


def assert_partition(shards, m):
    flat = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(flat), np.arange(m))


@pytest.mark.parametrize("kind", problems.SPLITS)
def test_every_split_is_a_partition(kind):
    y = np.repeat([0, 1, 2], [50, 30, 20])
    shards = problems.split_indices(kind, 7, labels=y, alpha=0.3, seed=4)
    assert len(shards) == 7 and all(len(s) >= 1 for s in shards)
    assert_partition(shards, 100)
    if kind != "dirichlet":
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_contiguous_iid_and_label_splits():
    assert [s.tolist() for s in problems.split_contiguous(10, 4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    a = problems.split_iid(50, 5, seed=1)
    b = problems.split_iid(50, 5, seed=1)
    c = problems.split_iid(50, 5, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(np.concatenate(a), np.arange(50))  # shuffled, not file order
    y = np.random.default_rng(0).integers(0, 4, 90)
    shards = problems.split_by_label(y, 6)
    for left, right in itertools.pairwise(shards):
        assert y[left].max() <= y[right].min()  # worker i's labels all <= worker i+1's


def test_dirichlet_small_alpha_is_more_skewed():
    y = np.repeat(np.arange(4), 250)

    def majority(alpha):
        fracs = []
        for seed in range(5):
            for s in problems.split_dirichlet(y, 8, alpha, seed=seed):
                fracs.append(np.bincount(y[s], minlength=4).max() / len(s))
        return np.mean(fracs)

    skewed, mixed = majority(0.1), majority(100.0)
    assert skewed > 0.8 and mixed < 0.45  # IID would give about 1/4 plus fluctuations
    one = problems.split_dirichlet(y, 8, 0.5, seed=3)
    two = problems.split_dirichlet(y, 8, 0.5, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(one, two))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: problems.split_indices("random", 3, num_samples=10), "unknown split 'random'"),
        (lambda: problems.split_indices("iid", 11, num_samples=10), "more workers than samples"),
        (lambda: problems.split_contiguous(5, 0), "workers must be a positive integer"),
        (lambda: problems.split_dirichlet([0, 1, 0, 1], 2, 0.0), "alpha must be a positive number"),
        (lambda: problems.split_dirichlet([0, 1, 0, 1], 2, -1.0), "alpha must be a positive number"),
        (lambda: problems.split_dirichlet([0, 1, 0, 1], 2, float("nan")), "alpha must be a positive number"),
        (lambda: problems.split_indices("label", 2, num_samples=4), "needs the labels"),
        (lambda: problems.split_indices("label", 2, num_samples=5, labels=[0, 1]), "labels has 2 entries"),
        (lambda: problems.split_dirichlet([0, 0, 1], 3, 1e-3, max_tries=3), "no Dirichlet"),
    ],
)
def test_split_bad_input_is_one_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# --- libsvm: ------------------------------------------------------------------------------------------------


def test_libsvm_round_trip_with_sklearn_writer(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 9)) * (rng.random((30, 9)) < 0.4)  # sparse-ish, some all-zero columns possible
    X[0, -1] = 1.5  # the last feature occurs, so the feature count is 9
    y = rng.integers(0, 2, 30).astype(float)  # 0/1 labels, like phishing
    path = tmp_path / "data.svm"
    dump_svmlight_file(X, y, str(path), zero_based=False)  # one-based indices, LIBSVM's convention
    A, b = sources.load_libsvm(f"libsvm:{path}")
    assert A.dtype == np.float32 and A.shape == (30, 9)
    np.testing.assert_allclose(A, X.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(b, np.where(y == 1, 1.0, -1.0))


def test_libsvm_hand_written_file_with_comments_and_gzip(tmp_path):
    text = (
        "# a comment line\n"
        "+1 1:0.5 3:2   # trailing comment\n"
        "-1 2:1\n"
        "+1 qid:7 1:-3 4:0.25\n"
    )
    expected = np.array([[0.5, 0, 2, 0], [0, 1, 0, 0], [-3, 0, 0, 0.25]], np.float32)
    plain = tmp_path / "w.txt"
    plain.write_text(text)
    packed = tmp_path / "w.txt.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for p in (plain, packed):
        A, b = sources.load_libsvm(f"libsvm:{p}")
        np.testing.assert_array_equal(A, expected)
        np.testing.assert_array_equal(b, [1.0, -1.0, 1.0])


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        ("", "no samples"),
        ("hello world\n", "cannot parse"),
        ("+1 3:1 1:2\n", "cannot parse"),
        ("1 1:1\n2 1:1\n3 2:1\n", "3 distinct labels"),
        ("1 1:nan\n-1 1:1\n", "non-finite"),
    ],
)
def test_libsvm_errors_are_one_line(tmp_path, content, match):
    path = tmp_path / "bad.svm"
    if content is not None:
        path.write_text(content)
    with pytest.raises(sources.DataSourceError, match=match) as e:
        sources.load_libsvm(f"libsvm:{path}")
    assert "\n" not in str(e.value)


def test_libsvm_spec_checks(tmp_path):
    with pytest.raises(sources.DataSourceError, match="empty path"):
        sources.parse_libsvm("libsvm:")
    with pytest.raises(sources.DataSourceError, match="is a directory"):
        sources.parse_libsvm(f"libsvm:{tmp_path}")
    # image studies get a clear line, not "unknown data source"
    with pytest.raises(sources.DataSourceError, match="only the asgrad study reads"):
        sources.parse_source(f"libsvm:{tmp_path}/x")


def test_libsvm_single_label_and_two_one_labels(tmp_path):
    p = tmp_path / "a.svm"
    p.write_text("2 1:1\n1 1:2\n2 2:1\n")
    _, b = sources.load_libsvm(f"libsvm:{p}")
    np.testing.assert_array_equal(b, [1.0, -1.0, 1.0])  # of two values the smaller is -1
    p.write_text("-1 1:1\n-1 2:1\n")
    _, b = sources.load_libsvm(f"libsvm:{p}")
    np.testing.assert_array_equal(b, [-1.0, -1.0])
