"""The ad_psgd study: its configs name the right systems and scenarios; presets validate; tiny end to end.

Hand-derived references: LeNet-5 on 28x28 images has 61 706 float32 parameters = 246 824 bytes, so a
message time of 0.05 means a bandwidth of 246 824 / 0.05 bytes per time unit; a ring all-reduce of n
workers sends 2(n - 1) model-sized messages' worth of bytes; a server link n times slower than a worker
link moves a model in n * message_time.
"""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from asgd_jax.sweep import group_configs
from asgd_jax.train import make_timing
from experiments import ad_psgd
from experiments.__main__ import main

MNIST_LIKE = SimpleNamespace(num_train=1437, image_shape=(28, 28, 1), num_classes=10)
SIZES = {"digits": 1437, ad_psgd.FASHION: 60000, "tfds:cifar10": 50000}


def _configs(settings, data=MNIST_LIKE):
    return ad_psgd.make_configs(SimpleNamespace(settings=settings, data=data))


def test_configs_name_the_systems_and_scenarios():
    n = 8
    s = dict(ad_psgd.PRESETS["quick"], workers=n)
    configs = _configs(s)
    assert len(configs) == 5 * 5 * len(s["learning_rates"])
    bandwidth = 61706 * 4 / 0.05
    by = {(c["method"], c["scenario"], c["learning_rate"]): c for c in configs}
    assert len(by) == len(configs)
    expected = {"allreduce": ("allreduce", None), "ssgd": ("sync", None), "asgd": ("async", None),
                "dpsgd": ("d-psgd", "ring"), "adpsgd": ("ad-psgd", "exponential")}
    for c in configs:
        rule, topology = expected[c["method"]]
        assert c["server_rule"] == rule and c.get("topology") == topology
        assert c["network"] is True and c["workers"] == c["max_workers"] == n
        assert c["optimizer"] == "sgd" and c["momentum"] == 0.9 and c["timing"] == "normal"
        assert c["latency"] == 0.001 and c["bandwidth"] == pytest.approx(bandwidth)
        fraction, slowdown, server = c["straggler_fraction"], c["straggler_slowdown"], c["server_bandwidth"]
        sc = c["scenario"]
        if sc == "homogeneous":
            assert (fraction, slowdown, server) == (0.0, 1.0, c["bandwidth"])
        elif sc == "congested":
            assert (fraction, slowdown) == (0.0, 1.0) and server == pytest.approx(bandwidth / n)
        else:
            assert fraction == pytest.approx(1 / n) and slowdown == {"slow2": 2, "slow4": 4, "slow16": 16}[sc]
            assert server == c["bandwidth"]
    # the same learning-rate grid for every method and scenario
    for m in ad_psgd.METHODS:
        for sc in ad_psgd.SCENARIOS:
            assert sorted(lr for (mm, ss, lr) in by if (mm, ss) == (m, sc)) == sorted(s["learning_rates"])
    # straggler_fraction 1/n makes exactly one worker (the last) 16x slower
    times = make_timing("fixed", {"time_mean": 1.0, "time_spread": 0.0, "straggler_fraction": 1 / n,
                                  "straggler_slowdown": 16.0}).sample(jax.random.key(0), np.arange(n), num_workers=n)
    assert np.asarray(times).tolist() == [1.0] * (n - 1) + [16.0]
    # one compiled program per method: every scenario and learning rate of a method in one group
    plain = [{k: v for k, v in c.items() if k not in ("method", "scenario")} for c in configs]
    assert len(group_configs(plain)) == 5


@pytest.mark.parametrize("preset", list(ad_psgd.PRESETS))
def test_presets_validate(preset):
    s = dict(ad_psgd.PRESETS[preset])
    shape = (32, 32, 3) if "cifar" in s["data"] else (28, 28, 1)
    data = SimpleNamespace(num_train=SIZES[s["data"]], image_shape=shape, num_classes=10)
    configs = _configs(s, data)  # normalize_config with the real training-set size: every config can train
    assert len(configs) == len(s["methods"]) * len(s["scenarios"]) * len(s["learning_rates"]) * len(s["seeds"])
    assert {c["model"] for c in configs} == {s["model"]}
    plain = [{k: v for k, v in c.items() if k not in ("method", "scenario")} for c in configs]
    assert len(group_configs(plain)) == len(s["methods"])
    if preset == "paper":  # ResNet-20 on CIFAR-10: 272 474 parameters, the bandwidth from its real size
        assert configs[0]["bandwidth"] == pytest.approx(272474 * 4 / s["message_time"])


def test_tiny_end_to_end(tmp_path):
    out = tmp_path / "adpsgd"
    assert main(["ad_psgd", "--preset", "tiny", "--chunk-size", "0", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    study_json = json.loads((out / "study.json").read_text())
    size = study_json["links"]["model_bytes"]
    n, mt = ad_psgd.PRESETS["tiny"]["workers"], ad_psgd.PRESETS["tiny"]["message_time"]
    by = {}
    for r in records:  # the labels are not in results.jsonl: name each record by its hyperparameters
        rule = {v[0]: k for k, v in ad_psgd.SYSTEMS.items()}[r["server_rule"]]
        sc = ("congested" if r["server_bandwidth"] < r["bandwidth"] else
              "homogeneous" if r["straggler_slowdown"] == 1 else f"slow{r['straggler_slowdown']:.0f}")
        by[(rule, sc)] = r
    assert set(by) == {(m, sc) for m in ad_psgd.METHODS for sc in ad_psgd.SCENARIOS}
    for (m, sc), r in by.items():
        assert len(r["sim_time_per_epoch"]) == len(r["bytes_sent_per_epoch"]) == 1
        assert (m in ("dpsgd", "adpsgd")) == ("consensus_distance_per_epoch" in r)
    # the library's model size is the study's: a ring all-reduce sends 2(n - 1) models' worth per round
    ar = by[("allreduce", "homogeneous")]
    assert ar["bytes_sent_per_epoch"][-1] == pytest.approx(ar["server_steps_per_epoch"][-1] * 2 * (n - 1) * size)
    # slow16: every AllReduce round waits for the 16x slower worker (normal times of mean 16, spread 1.6)
    slow = by[("allreduce", "slow16")]
    assert slow["sim_time_per_epoch"][-1] >= 12 * slow["server_steps_per_epoch"][-1]
    # congested: an SSGD round is at least 2n messages on a server link moving a model in n * message_time
    ssgd = by[("ssgd", "congested")]
    assert ssgd["sim_time_per_epoch"][-1] >= ssgd["server_steps_per_epoch"][-1] * 2 * n * n * mt
    for name in ("accuracy.png", "time_per_epoch.png", "consensus.png", "report.md"):
        assert (out / name).stat().st_size > 1000, name
    report = (out / "report.md").read_text()
    assert "## The paper's claims" in report
    verdicts = [line for line in report.splitlines() if line[:3] in ("1. ", "2. ", "3. ")]
    assert len(verdicts) == 3
    # claim 2's verdict is the one the numbers give: AllReduce's and SSGD's slow16 times against AD-PSGD's
    t = lambda m, sc: by[(m, sc)]["sim_time_per_epoch"][-1]
    ok = (t("allreduce", "slow16") >= 2 * t("adpsgd", "slow16") and t("ssgd", "slow16") >= 2 * t("adpsgd", "slow16")
          and t("ssgd", "congested") >= 2 * t("adpsgd", "congested"))
    assert verdicts[1].startswith("2. **agrees**" if ok else "2. **does not agree**")
    ps = all(t(m, "congested") >= 2 * t(m, "homogeneous") for m in ("ssgd", "asgd"))
    assert verdicts[2].startswith("3. **agrees**" if ps else "3. **does not agree**")


@pytest.mark.parametrize("argv, word", [
    (["--methods", "adpsgd,bogus"], "bogus"),
    (["--scenarios", "slow3"], "slow3"),
    (["--workers", "5"], "even"),
])
def test_bad_input_is_one_line(capsys, argv, word):
    assert main(["ad_psgd", "--preset", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err
