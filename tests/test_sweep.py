"""The sweep engine: grid expansion, normalization, grouping, chunking."""

import numpy as np
import pytest

from asgd_jax import sweep
from asgd_jax.data import make_dataset


def test_expand_grid_order_and_fixed_values():
    grid = {"a": [1, 2], "b": (3, 4, 5), "c": "x"}
    got = sweep.expand_grid(grid)
    assert len(got) == 6
    assert got[0] == {"a": 1, "b": 3, "c": "x"}
    assert got[1] == {"a": 1, "b": 4, "c": "x"}  # last key varies fastest
    assert got[-1] == {"a": 2, "b": 5, "c": "x"}


def test_expand_grid_empty_axis():
    with pytest.raises(ValueError, match="empty"):
        sweep.expand_grid({"learning_rate": []})


def test_normalize_config_fills_defaults():
    c = sweep.normalize_config({"learning_rate": 0.1, "batch_size": 32, "epochs": 2})
    assert c == {
        "model": "lenet5",
        "optimizer": "sgd",
        "batch_size": 32,
        "epochs": 2,
        "seed": 0,
        "momentum": 0.9,
        "delay": 0,
        "warmup_steps": 0,
        "learning_rate": 0.1,
    }
    a = sweep.normalize_config({"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 8, "epochs": 1})
    assert a["b1"] == 0.9 and a["b2"] == 0.999 and a["eps"] == 1e-8 and "momentum" not in a


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"learning_rate": -0.1}, "learning_rate must be a positive"),
        ({"learning_rate": 0.0}, "learning_rate must be a positive"),
        ({"learning_rate": 0.1, "delay": -1}, "delay must be a non-negative"),
        ({"learning_rate": 0.1, "warmup_steps": -5}, "warmup_steps must be a non-negative"),
        ({"learning_rate": 0.1, "batch_size": 0}, "batch_size must be a positive"),
        ({"learning_rate": 0.1, "batch_size": 101}, "larger than the training set"),
        ({"learning_rate": 0.1, "seed": -3}, "seed"),
        ({"learning_rate": 0.1, "optimizer": "lion"}, "unknown optimizer"),
        ({"learning_rate": 0.1, "nesterov": True}, "unknown hyperparameter"),
    ],
)
def test_normalize_config_rejects(bad, match):
    cfg = {"batch_size": 16, "epochs": 1, **bad}
    with pytest.raises(ValueError, match=match):
        sweep.normalize_config(cfg, num_train=100)


def test_config_id_stable_and_sensitive():
    c = sweep.normalize_config({"learning_rate": 0.1, "batch_size": 32, "epochs": 2, "data": "digits"})
    assert sweep.config_id(c) == sweep.config_id(dict(reversed(list(c.items()))))
    for change in ({"learning_rate": 0.2}, {"data": "idx:/x"}, {"seed": 1}, {"delay": 1}):
        assert sweep.config_id({**c, **change}) != sweep.config_id(c)


def test_group_configs_by_shapes():
    configs = [
        sweep.normalize_config(c)
        for c in sweep.expand_grid(
            {"learning_rate": [0.1, 0.01], "delay": [0, 5], "batch_size": [16, 32], "epochs": 1}
        )
    ]
    groups = sweep.group_configs(configs)
    assert [g.train_config.batch_size for g in groups] == [16, 32]
    assert all(g.train_config.max_delay == 5 for g in groups)
    assert sorted(len(g.configs) for g in groups) == [4, 4]


def _toy_dataset():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 28, 28)).astype(np.uint8)
    y = (x[:, :14].mean((1, 2)) > x[:, 14:].mean((1, 2))).astype(np.int32)  # which half is brighter
    return make_dataset(x[:64], y[:64], x[64:], y[64:], name="toy", num_classes=2)


def test_results_do_not_depend_on_chunking():
    ds = _toy_dataset()
    configs = [
        sweep.normalize_config(c)
        for c in sweep.expand_grid(
            {
                "model": "mlp",
                "learning_rate": [0.05, 0.2],
                "delay": [0, 2],
                "seed": [0, 1],
                "batch_size": 16,
                "epochs": 2,
            }
        )
    ]
    (group,) = sweep.group_configs(configs)
    one_by_one = sweep.run_group(group, ds, chunk_size=1, loop="step")
    all_at_once = sweep.run_group(group, ds, chunk_size=0, loop="scan")
    three = sweep.run_group(group, ds, chunk_size=3, loop="step")
    for a, b, c in zip(one_by_one, all_at_once, three):
        assert a["config_id"] == b["config_id"] == c["config_id"]
        for key in ("test_accuracy", "test_loss", "train_loss"):
            np.testing.assert_allclose(a[key + "_per_epoch"], b[key + "_per_epoch"], rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(a[key + "_per_epoch"], c[key + "_per_epoch"], rtol=2e-5, atol=1e-6)
    # different seeds really differ (the seed reaches the run)
    assert one_by_one[0]["train_loss"] != one_by_one[1]["train_loss"]


def test_run_group_reports_divergence_without_crashing():
    ds = _toy_dataset()
    configs = [
        sweep.normalize_config({"model": "mlp", "learning_rate": lr, "batch_size": 16, "epochs": 2})
        for lr in (0.05, 1e6)
    ]
    (group,) = sweep.group_configs(configs)
    ok, bad = sweep.run_group(group, ds)
    assert ok["diverged"] is False and ok["diverged_epoch"] is None
    assert bad["diverged"] is True and bad["diverged_epoch"] in (1, 2)
    assert bad["nonfinite"] or bad["collapsed"]
