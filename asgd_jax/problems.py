r"""Test problems with known gradients: AsGrad's logistic regression, heterogeneous data, worker splits.

AsGrad (Islamov et al. 2024; docs/methods.md#assignment-rules-pure-random-shuffle-asgrad-islamov-et-al-2024)
measures asynchronous methods
on logistic regression with a non-convex regulariser,

.. math::

    f(x) = \frac1m \sum_{k=1}^m \omega_k \log\bigl(1 + e^{-b_k a_k^\top x}\bigr)
           + \lambda \sum_{j=1}^d \frac{x_j^2}{1 + x_j^2},
    \qquad b_k \in \{-1, +1\},\ \lambda = 0.1,

(:func:`logistic_loss`, sample weights :math:`\omega_k = 1` unless given), whose
gradient :func:`logistic_gradient` has the closed form

.. math::

    \nabla f(x) = -\frac1m \sum_k \omega_k\, b_k\, \sigma(-b_k a_k^\top x)\, a_k
                  + \lambda \frac{2x}{(1 + x^2)^2}\ \text{(elementwise)},
    \qquad \sigma(t) = \frac{1}{1 + e^{-t}}.

The data of ``n`` workers: a :func:`synthetic` heterogeneous generator (the
Synthetic(α, β) family of Li et al.'s FedProx, binary labels) and four ways to
split ``m`` samples among the workers (:func:`split_indices`): ``"iid"``,
``"contiguous"`` in file order (AsGrad's), ``"label"`` (sorted by label) and
``"dirichlet"`` (per-class Dirichlet(α) proportions). Worker ``i``'s local
objective :math:`f_i` is the loss on its shard, and the goal is AsGrad's
:math:`F = \frac1n \sum_i f_i`: :func:`shard_weights` gives the sample weights
:math:`\omega` that make :func:`logistic_gradient` on the whole data equal
:math:`\nabla F`, and :func:`pad_shards` the padded per-worker arrays a jitted
loop indexes with the worker id.

Everything here is pure: NumPy for data generation and splitting (seeded
``numpy.random.Generator``), ``jax.numpy`` for the loss and its gradient (jit-,
vmap- and grad-compatible). No file I/O; LIBSVM files are read by
``experiments.sources``.

Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from asgd_jax import problems
    >>> A, b, owner = problems.synthetic(1.0, 1.0, workers=4, samples_per_worker=50, dim=10, seed=0)
    >>> A.shape, sorted(set(b.tolist())), np.bincount(owner).tolist()
    ((200, 10), [-1.0, 1.0], [50, 50, 50, 50])
    >>> shards = problems.split_indices("contiguous", 4, num_samples=200)
    >>> [int(s[0]) for s in shards]
    [0, 50, 100, 150]
    >>> round(float(problems.logistic_loss(jnp.zeros(10), A, b)), 4)   # log 2 at x = 0
    0.6931
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_LAMBDA",
    "LABEL_MODES",
    "SPLITS",
    "logistic_gradient",
    "logistic_loss",
    "nonconvex_regulariser",
    "pad_shards",
    "shard_weights",
    "split_by_label",
    "split_contiguous",
    "split_dirichlet",
    "split_iid",
    "split_indices",
    "synthetic",
]

#: AsGrad's regularisation strength λ.
DEFAULT_LAMBDA = 0.1
#: The worker splits of :func:`split_indices`.
SPLITS = ("iid", "contiguous", "label", "dirichlet")
#: How :func:`synthetic` draws a label from a sample's score.
LABEL_MODES = ("sign", "logistic")


# --- the loss ---------------------------------------------------------------------------------------


def nonconvex_regulariser(x: jax.Array, lam: float | jax.Array = DEFAULT_LAMBDA) -> jax.Array:
    r"""AsGrad's non-convex regulariser :math:`\lambda \sum_j x_j^2 / (1 + x_j^2)`.

    Bounded by :math:`\lambda d`; convex only for :math:`|x_j| < 1/\sqrt3`.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax import problems
        >>> round(float(problems.nonconvex_regulariser(jnp.array([1.0, -1.0, 0.0]), lam=0.1)), 6)  # 0.1 (1/2 + 1/2)
        0.1
    """
    x2 = jnp.square(x)
    return lam * jnp.sum(x2 / (1.0 + x2))


def _weights(b, weights):
    return jnp.ones_like(b) if weights is None else jnp.asarray(weights, b.dtype)


def logistic_loss(
    x: jax.Array, A: jax.Array, b: jax.Array, lam: float | jax.Array = DEFAULT_LAMBDA, weights=None
) -> jax.Array:
    r"""AsGrad's objective: mean logistic loss plus the non-convex regulariser.

    .. math::

        f(x) = \frac1m \sum_{k=1}^m \omega_k \log(1 + e^{-b_k a_k^\top x})
               + \lambda \sum_j \frac{x_j^2}{1 + x_j^2}

    with :math:`m` the number of rows of ``A`` (padding rows of weight 0 still
    count in :math:`m`: scale the weights, as :func:`pad_shards` does). Computed
    as ``logaddexp(0, -z)``, finite for any margin :math:`z = b_k a_k^\top x`.

    Args:
        x: parameters, shape ``(d,)``.
        A: features, shape ``(m, d)``.
        b: labels in ``{-1, +1}``, shape ``(m,)``.
        lam: :math:`\lambda \ge 0` (default 0.1, AsGrad's).
        weights: optional sample weights :math:`\omega`, shape ``(m,)`` (default 1).

    Returns:
        A scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax import problems
        >>> A, b = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, -1.0])
        >>> x = jnp.array([1.0, 0.0])   # margins 1 and 0: (log(1+e^-1) + log 2)/2 + 0.1 * 1/2
        >>> round(float(problems.logistic_loss(x, A, b)), 6)
        0.553204
    """
    z = b * (A @ x)
    return jnp.mean(_weights(b, weights) * jnp.logaddexp(0.0, -z)) + nonconvex_regulariser(x, lam)


def logistic_gradient(
    x: jax.Array, A: jax.Array, b: jax.Array, lam: float | jax.Array = DEFAULT_LAMBDA, weights=None
) -> jax.Array:
    r"""The gradient of :func:`logistic_loss`, in closed form.

    .. math::

        \nabla f(x) = -\frac1m A^\top\bigl(\omega \odot b \odot \sigma(-b \odot Ax)\bigr)
                      + \lambda \frac{2x}{(1 + x^2)^2}

    One pass over ``A`` for the margins and one for :math:`A^\top(\cdot)`; equal
    to ``jax.grad(logistic_loss)`` (tested) without autodiff's bookkeeping.

    Args:
        x, A, b, lam, weights: as in :func:`logistic_loss`.

    Returns:
        An array of ``x``'s shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from asgd_jax import problems
        >>> A, b = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, -1.0])
        >>> problems.logistic_gradient(jnp.zeros(2), A, b)   # -(1/2) A^T (b/2) at x = 0
        Array([-0.25,  0.5 ], dtype=float32)
    """
    z = b * (A @ x)
    coef = _weights(b, weights) * b * jax.nn.sigmoid(-z)
    x2 = jnp.square(x)
    return -(coef @ A) / A.shape[0] + lam * 2.0 * x / jnp.square(1.0 + x2)


# --- synthetic heterogeneous data ------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_nonnegative(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    return v


def synthetic(
    alpha: float,
    beta: float,
    workers: int,
    samples_per_worker: int | Sequence[int],
    dim: int = 60,
    *,
    labels: str = "sign",
    label_noise: float = 0.0,
    unit_norm: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Synthetic(α, β): heterogeneous binary classification data, one block per worker.

    The FedProx family (Li et al. 2020, "Federated optimization in heterogeneous
    networks", §5.1), with one score instead of ten class scores so that the
    labels are binary. For worker :math:`k = 1..n`:

    .. math::

        u_k \sim \mathcal N(0, \alpha^2),\quad B_k \sim \mathcal N(0, \beta^2),\quad
        w_k \sim \mathcal N(u_k \mathbf 1, I_d),\quad c_k \sim \mathcal N(u_k, 1),\quad
        v_k \sim \mathcal N(B_k \mathbf 1, I_d),

    and each of its samples :math:`a \sim \mathcal N(v_k, \Sigma)` with
    :math:`\Sigma = \mathrm{diag}(j^{-1.2})_{j=1..d}`, labelled from its score
    :math:`s = w_k^\top a + c_k`: ``labels="sign"`` gives :math:`b = +1` if
    :math:`s \ge 0` else :math:`-1` (the binary analogue of FedProx's
    :math:`\arg\max \mathrm{softmax}(W_k a + c_k)`); ``labels="logistic"`` draws
    :math:`b = +1` with probability :math:`\sigma(s)` (the logistic model; AsGrad's
    code draws its synthetic labels this way, with the opposite sign convention).
    α controls how much the workers' models differ, β how much their features
    do; α = β = 0 still leaves each worker its own :math:`w_k, v_k`. Finally
    each label is flipped independently with probability ``label_noise``
    (drawn after everything else: the same seed gives the same samples and
    noiseless labels for every noise level).

    Without label noise the data are close to linearly separable (within a
    worker the score varies little around its mean, and the workers' feature
    means differ), so the logistic loss flattens towards zero far out along
    separating directions while the bounded regulariser costs at most
    :math:`\lambda d`: :math:`\|\nabla f\|` becomes small far from every
    stationary point. A little label noise (``label_noise=0.1``) makes the data
    non-separable and removes these flat valleys.

    ``unit_norm=True`` scales every sample to unit Euclidean norm after its
    label is drawn (labels unchanged). FedProx's samples have norms around
    :math:`\sqrt{d(1 + \beta^2)}`, which makes :func:`logistic_loss` steep
    (its smoothness constant is up to :math:`\max_k \|a_k\|^2/4 + 2\lambda`);
    with unit rows it is at most :math:`1/4 + 2\lambda`, the regime in which
    AsGrad's step sizes :math:`2^{-1} \ldots 2^{-10}` bracket the best one.

    **(choice)** α and β are standard deviations, as in FedProx's reference code
    (``np.random.normal(0, alpha)``), which the paper writes :math:`\mathcal N(0, \alpha)`.
    **(choice)** A two-class softmax would not do as the binary variant: its
    label depends on the difference of two class scores, in which the shared
    mean :math:`u_k` cancels and α would lose its effect; one score keeps it.

    Samples are in worker order (worker 0's block first), so the
    ``"contiguous"`` split of :func:`split_indices` with the same worker count and
    equal block sizes gives every worker its own generated block.

    Args:
        alpha: :math:`\alpha \ge 0`.
        beta: :math:`\beta \ge 0`.
        workers: :math:`n \ge 1` blocks.
        samples_per_worker: samples of each block: one int, or one per worker.
        dim: :math:`d \ge 1` features (FedProx: 60).
        labels: ``"sign"`` or ``"logistic"``.
        label_noise: probability :math:`p \in [0, 1]` of flipping each label.
        unit_norm: scale every sample to unit norm (after labelling).
        seed: seed of the ``numpy.random.default_rng`` drawing everything.

    Returns:
        ``(A, b, owner)``: float32 features ``(m, d)``, float32 labels in
        ``{-1, +1}`` ``(m,)`` and int32 ``owner`` ``(m,)``, the block (worker)
        each sample was generated for; :math:`m` = total samples.

    Raises:
        ValueError: (one line) a negative α or β, a non-positive count, an
            unknown label mode, a noise outside [0, 1], or per-worker counts of
            the wrong length.

    Example:
        >>> import numpy as np
        >>> from asgd_jax import problems
        >>> A, b, owner = problems.synthetic(0.5, 0.5, workers=3, samples_per_worker=[2, 3, 1], dim=4)
        >>> A.shape, A.dtype, owner.tolist()
        ((6, 4), dtype('float32'), [0, 0, 1, 1, 1, 2])
    """
    alpha = _check_nonnegative("alpha", alpha)
    beta = _check_nonnegative("beta", beta)
    n = _check_positive_int("workers", workers)
    d = _check_positive_int("dim", dim)
    noise = _check_nonnegative("label_noise", label_noise)
    if noise > 1:
        raise ValueError(f"label_noise must be a probability in [0, 1], got {label_noise!r}.")
    if labels not in LABEL_MODES:
        raise ValueError(f"unknown labels {labels!r}; choose one of {', '.join(LABEL_MODES)}.")
    if isinstance(samples_per_worker, (int, np.integer)) and not isinstance(samples_per_worker, bool):
        counts = [_check_positive_int("samples_per_worker", samples_per_worker)] * n
    else:
        counts = [_check_positive_int("samples_per_worker", c) for c in samples_per_worker]
        if len(counts) != n:
            raise ValueError(f"samples_per_worker has {len(counts)} entries for {n} workers; give one per worker.")
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, alpha, n)
    big_b = rng.normal(0.0, beta, n)
    std = np.arange(1, d + 1, dtype=np.float64) ** -0.6  # sqrt of Σ_jj = j^-1.2
    feats, labs = [], []
    for k in range(n):
        w = rng.normal(u[k], 1.0, d)
        c = rng.normal(u[k], 1.0)
        v = rng.normal(big_b[k], 1.0, d)
        a = v + std * rng.standard_normal((counts[k], d))
        score = a @ w + c
        if labels == "sign":
            y = np.where(score >= 0, 1.0, -1.0)
        else:
            y = np.where(rng.random(counts[k]) < 1.0 / (1.0 + np.exp(-score)), 1.0, -1.0)
        feats.append(a)
        labs.append(y)
    owner = np.repeat(np.arange(n, dtype=np.int32), counts)
    A, b = np.concatenate(feats), np.concatenate(labs)
    if noise > 0:  # drawn last, so the noise flips labels and changes nothing else
        b = np.where(rng.random(len(b)) < noise, -b, b)
    if unit_norm:
        A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return A.astype(np.float32), b.astype(np.float32), owner


# --- worker splits -----------------------------------------------------------------------------------


def _check_split_size(num_samples, workers) -> tuple[int, int]:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}.")
    n = _check_positive_int("workers", workers)
    if n > num_samples:
        raise ValueError(f"cannot split {num_samples} samples among {n} workers (more workers than samples).")
    return int(num_samples), n


def _labels(labels) -> np.ndarray:
    if labels is None:
        raise ValueError("this split needs the labels; pass labels=<array of one label per sample>.")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one per sample), got shape {y.shape}.")
    return y


def split_iid(num_samples: int, workers: int, *, seed: int = 0) -> list[np.ndarray]:
    """IID split: a random permutation of the samples cut into ``workers`` near-equal parts.

    Shard sizes differ by at most one (``np.array_split``); each shard's indices
    are sorted.

    Example:
        >>> from asgd_jax import problems
        >>> shards = problems.split_iid(10, 3, seed=0)
        >>> [len(s) for s in shards], sorted(i for s in shards for i in s) == list(range(10))
        ([4, 3, 3], True)
    """
    m, n = _check_split_size(num_samples, workers)
    perm = np.random.default_rng(seed).permutation(m)
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, n)]


def split_contiguous(num_samples: int, workers: int) -> list[np.ndarray]:
    """Contiguous split in file order (AsGrad's): worker ``i`` gets the ``i``-th block.

    Shard sizes differ by at most one (the first ``m mod n`` workers get one
    more). On a file sorted by label (LIBSVM's w7a) this is extremely
    heterogeneous.

    Example:
        >>> from asgd_jax import problems
        >>> [s.tolist() for s in problems.split_contiguous(7, 3)]
        [[0, 1, 2], [3, 4], [5, 6]]
    """
    m, n = _check_split_size(num_samples, workers)
    return [s.astype(np.int64) for s in np.array_split(np.arange(m), n)]


def split_by_label(labels, workers: int) -> list[np.ndarray]:
    """Split sorted by label: the samples in (label, index) order cut into near-equal blocks.

    Worker ``0`` gets the smallest labels; with as many workers as classes
    (and balanced classes) each worker holds about one class.

    Example:
        >>> from asgd_jax import problems
        >>> [s.tolist() for s in problems.split_by_label([1, -1, 1, -1, 1, -1], 2)]
        [[1, 3, 5], [0, 2, 4]]
    """
    y = _labels(labels)
    _, n = _check_split_size(len(y), workers)
    order = np.argsort(y, kind="stable")
    return [s.astype(np.int64) for s in np.array_split(order, n)]


def split_dirichlet(
    labels, workers: int, alpha: float, *, seed: int = 0, min_size: int = 1, max_tries: int = 1000
) -> list[np.ndarray]:
    r"""Label-skewed split: each class spread over the workers in Dirichlet(α) proportions.

    For every class :math:`c`, its samples (shuffled) are cut among the workers
    in proportions :math:`p_c \sim \mathrm{Dir}(\alpha \mathbf 1_n)` (Hsu et al.
    2019). Small α: each worker sees few classes; large α: close to IID. The
    whole draw is repeated until every worker has at least ``min_size`` samples
    (a worker without data has no local objective).

    Raises:
        ValueError: (one line) α <= 0, more workers than samples, or no draw in
            ``max_tries`` gave every worker ``min_size`` samples.

    Example:
        >>> import numpy as np
        >>> from asgd_jax import problems
        >>> y = np.repeat([0, 1], 50)
        >>> shards = problems.split_dirichlet(y, 4, alpha=0.5, seed=0)
        >>> sum(len(s) for s in shards), min(len(s) for s in shards) >= 1
        (100, True)
    """
    y = _labels(labels)
    m, n = _check_split_size(len(y), workers)
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}.") from None
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}.")
    min_size = int(min_size)
    if min_size * n > m:
        raise ValueError(f"cannot give each of {n} workers {min_size} of {m} samples; lower min_size.")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max(1, int(max_tries))):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n, a))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for i, piece in enumerate(np.split(idx, cuts)):
                parts[i].append(piece)
        shards = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            return shards
    raise ValueError(
        f"no Dirichlet({a:g}) draw in {max_tries} tries gave each of {n} workers {min_size} sample(s); "
        "raise alpha or use fewer workers."
    )


def split_indices(
    kind: str,
    workers: int,
    *,
    num_samples: int | None = None,
    labels=None,
    alpha: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Per-worker index arrays of one of the :data:`SPLITS` (a partition of ``0 .. m-1``).

    ``"iid"`` (:func:`split_iid`), ``"contiguous"`` (:func:`split_contiguous`),
    ``"label"`` (:func:`split_by_label`), ``"dirichlet"``
    (:func:`split_dirichlet`, concentration ``alpha``). ``num_samples`` defaults
    to ``len(labels)``; the label-based splits need ``labels``.

    Raises:
        ValueError: (one line) an unknown split or a bad argument.

    Example:
        >>> from asgd_jax import problems
        >>> [len(s) for s in problems.split_indices("iid", 3, num_samples=8)]
        [3, 3, 2]
        >>> problems.split_indices("random", 3, num_samples=8)
        Traceback (most recent call last):
        ...
        ValueError: unknown split 'random'; choose one of iid, contiguous, label, dirichlet.
    """
    if kind not in SPLITS:
        raise ValueError(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}.")
    if num_samples is None:
        if labels is None:
            raise ValueError("pass num_samples or labels.")
        num_samples = len(np.asarray(labels))
    elif labels is not None and len(np.asarray(labels)) != num_samples:
        raise ValueError(f"labels has {len(np.asarray(labels))} entries but num_samples is {num_samples}.")
    if kind == "iid":
        return split_iid(num_samples, workers, seed=seed)
    if kind == "contiguous":
        return split_contiguous(num_samples, workers)
    if kind == "label":
        return split_by_label(labels, workers)
    return split_dirichlet(labels, workers, alpha, seed=seed)


# --- per-worker objectives ------------------------------------------------------------------------------


def _check_partition(shards: Sequence[np.ndarray], num_samples: int) -> None:
    if not shards:
        raise ValueError("shards is empty; give one index array per worker.")
    if any(len(s) == 0 for s in shards):
        raise ValueError("every worker needs at least one sample; a shard is empty.")
    if num_samples is not None:
        flat = np.concatenate([np.asarray(s) for s in shards])
        if len(flat) != num_samples or not np.array_equal(np.sort(flat), np.arange(num_samples)):
            raise ValueError(f"shards must partition 0 .. {num_samples - 1} (each sample in exactly one shard).")


def shard_weights(shards: Sequence[np.ndarray], num_samples: int) -> np.ndarray:
    r"""Sample weights :math:`\omega_k = m / (n\, m_{i(k)})` turning the data mean into AsGrad's :math:`F`.

    With :math:`f_i` the loss on worker :math:`i`'s :math:`m_i` samples,
    :math:`F = \frac1n \sum_i f_i` is :func:`logistic_loss` on all :math:`m`
    samples with these weights (sample :math:`k` on worker :math:`i(k)`). With
    equal shard sizes every weight is 1 and :math:`F = f`.

    Example:
        >>> from asgd_jax import problems
        >>> [round(float(w), 4) for w in problems.shard_weights([[0, 1, 2], [3]], 4)]   # 4/6 and 4/2
        [0.6667, 0.6667, 0.6667, 2.0]
    """
    _check_partition(shards, num_samples)
    w = np.empty(num_samples, np.float64)
    n = len(shards)
    for s in shards:
        w[np.asarray(s)] = num_samples / (n * len(s))
    return w.astype(np.float32)


def pad_shards(A, b, shards: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Per-worker arrays padded to the largest shard, for indexing by worker id inside ``jit``.

    Returns ``(A_pad, b_pad, w_pad)`` of shapes ``(n, M, d)``, ``(n, M)``,
    ``(n, M)`` with :math:`M = \max_i m_i`: worker :math:`i`'s rows, zeros after
    them, and weights :math:`M / m_i` on its rows and 0 on the padding, so that
    ``logistic_gradient(x, A_pad[i], b_pad[i], lam, w_pad[i])`` is
    :math:`\nabla f_i(x)`, the gradient on worker :math:`i`'s shard alone.

    Example:
        >>> import numpy as np, jax.numpy as jnp
        >>> from asgd_jax import problems
        >>> A, b = np.eye(3, dtype=np.float32), np.array([1.0, -1.0, 1.0], np.float32)
        >>> A_pad, b_pad, w_pad = problems.pad_shards(A, b, [np.array([0, 1]), np.array([2])])
        >>> A_pad.shape, w_pad.tolist()
        ((2, 2, 3), [[1.0, 1.0], [2.0, 0.0]])
        >>> bool(jnp.allclose(problems.logistic_gradient(jnp.ones(3), A_pad[1], b_pad[1], 0.1, w_pad[1]),
        ...                   problems.logistic_gradient(jnp.ones(3), A[2:], b[2:], 0.1)))
        True
    """
    A = np.asarray(A)
    b = np.asarray(b)
    if A.ndim != 2 or b.shape != (A.shape[0],):
        raise ValueError(f"A must be (m, d) and b (m,), got {A.shape} and {b.shape}.")
    _check_partition(shards, None)
    n = len(shards)
    size = max(len(s) for s in shards)
    A_pad = np.zeros((n, size, A.shape[1]), A.dtype)
    b_pad = np.zeros((n, size), b.dtype)
    w_pad = np.zeros((n, size), np.float32)
    for i, s in enumerate(shards):
        s = np.asarray(s)
        A_pad[i, : len(s)] = A[s]
        b_pad[i, : len(s)] = b[s]
        w_pad[i, : len(s)] = size / len(s)
    return A_pad, b_pad, w_pad
