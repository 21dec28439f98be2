"""The `paper` presets' programs compile and run here, so a GPU/TPU run is never their first execution.

Every group of each study's paper grid is built exactly as the study builds it (same static shapes:
model, optimizer, batch size, maximum delay), then runs one epoch through the GPU/TPU path
(`loop="scan"`) on MNIST-shaped random data cut down to 1 024 samples (one batch of the largest size), for two of its configs.
"""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from asgd_jax.data import make_dataset
from asgd_jax.sweep import Group, group_configs, run_group


@pytest.fixture(scope="module")
def mnist_shaped():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1024 + 256, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 1024 + 256)
    return make_dataset(x[:1024], y[:1024], x[1024:], y[1024:], name="mnist-shaped", num_classes=10)


def _paper_configs(study):
    from experiments import adam_vs_sgd, delay_sweep, warmup

    module = {"delay_sweep": delay_sweep, "adam_vs_sgd": adam_vs_sgd, "warmup": warmup}[study]
    ctx = SimpleNamespace(settings=dict(module.PRESETS["paper"]), data=SimpleNamespace(num_train=60000))
    # the real MNIST training-set size; the library's configs are the study's without their method labels
    return [{k: v for k, v in c.items() if k != "method"} for c in module.make_configs(ctx)]


# delay_sweep: one group per batch size (64 ... 1024). adam_vs_sgd: SGD at batch 64, and Adam at batches
# 1024 (delay 0), round(1024 / 33) = 31 (delay 32), round(1024 / 129) = 8 (delay 128) and
# max(8, round(1024 / 257) = 4) = 8 (delay 256), the last two sharing a group. warmup: one batch size.
@pytest.mark.parametrize("study, groups", [("delay_sweep", 5), ("adam_vs_sgd", 4), ("warmup", 1)])
def test_paper_groups_compile_and_run(mnist_shaped, study, groups):
    configs = _paper_configs(study)
    found = group_configs(configs)
    assert len(found) == groups
    for g in found:
        one_epoch = dataclasses.replace(g.train_config, epochs=1)
        results = run_group(Group(one_epoch, g.configs[:2]), mnist_shaped, loop="scan", chunk_size=0)
        assert len(results) == min(2, len(g.configs))
        for r in results:
            assert len(r["test_accuracy_per_epoch"]) == 1
            assert r["diverged"] or 0.0 <= r["test_accuracy"] <= 1.0
