"""The dean2012 study: configs name the right systems; presets validate; the verdicts on hand-made numbers;
tiny end to end; one-line errors for bad input.

Hand-derived references: the MLP on 28x28 images has 784*256 + 256 + 256*128 + 128 + 128*10 + 10 = 235 146
float32 parameters (940 584 bytes); Downpour's failure-free run time is epochs * (n // b) / replicas.
"""

import json
from types import SimpleNamespace

import pytest

from asgd_jax.sweep import group_configs
from experiments import dean2012
from experiments.__main__ import main

DIGITS = SimpleNamespace(num_train=1437, image_shape=(28, 28, 1), num_classes=10, name="digits")
SIZES = {"digits": 1437, dean2012.FASHION: 60000, "tfds:mnist": 60000}
MLP_BYTES = (784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10) * 4


def _configs(settings, data=DIGITS):
    return dean2012.make_configs(SimpleNamespace(settings=settings, data=data))


def test_configs_name_the_systems():
    s = dict(dean2012.PRESETS["tiny"], replicas=[2, 3], failure_replicas=3)
    configs = _configs(s)
    by = {}
    for c in configs:
        by.setdefault((c["part"], c["method"]), []).append(c)
    single = by[("train", "single")][0]
    assert (single["server_rule"], single["workers"], single["optimizer"], single["momentum"]) == ("async", 1, "sgd",
                                                                                                   0.0)
    for r, c in zip([2, 3], by[("train", "downpour_adagrad")]):
        assert (c["server_rule"], c["workers"], c["optimizer"]) == ("downpour", r, "adagrad")
        assert (c["n_fetch"], c["n_push"], c["local_learning_rate"]) == (1, 1, 0.0)   # the paper's experiments
    assert {c["server_rule"] for c in by[("train", "ssgd")]} == {"sync"}
    assert {c["optimizer"] for c in by[("train", "downpour_sgd")]} == {"sgd"}
    # staleness: one config per (S, L), a network whose shard link moves the whole model in message_time
    st = by[("staleness", "downpour_adagrad")]
    assert sorted((c.get("shards", 1), c["shard_latency"]) for c in st) == [(1, 0.0), (1, 1.0), (4, 0.0), (4, 1.0)]
    assert [c["server_bandwidth"] for c in st] == [pytest.approx(MLP_BYTES / s["message_time"])] * 4
    assert {c["bandwidth"] for c in st} == {0.0}                                  # replica links: unlimited
    # failure: replica 0 down from 0.3 to 0.6 of 2 epochs * 44 gradients / 3 replicas
    for c in by[("failure", "downpour_adagrad")] + by[("failure", "ssgd")]:
        assert (c["fail_worker"], c["workers"]) == (0, 3)
        assert c["fail_at"] == pytest.approx(0.3 * 2 * 44 / 3) and c["return_at"] == pytest.approx(0.6 * 2 * 44 / 3)
    sb = by[("train", "sandblaster")]
    assert [(c["workers"], c["lbfgs_batch"], c["portions"]) for c in sb] == [(4, 256, 16)]
    sp = by[("speedup", "model_parallel")]
    assert [c["shape"] for c in sp] == ["speech", "image"]


@pytest.mark.parametrize("preset", list(dean2012.PRESETS))
def test_presets_validate(preset):
    s = dict(dean2012.PRESETS[preset])
    data = SimpleNamespace(num_train=SIZES[s["data"]], image_shape=(28, 28, 1), num_classes=10, name=s["data"])
    dean2012.check(s, set())
    configs = _configs(s, data)   # normalize_config with the real training-set size: every config can train
    trained = [c for c in configs if "system" in c]
    lrs = len(s["sgd_learning_rates"]), len(s["adagrad_learning_rates"])
    want = (lrs[0] + len(s["replicas"]) * (2 * lrs[0] + lrs[1]) + len(s["shard_counts"]) * len(s["shard_latencies"])
            + lrs[1] + lrs[0]) * len(s["seeds"])
    assert len(trained) == want
    plain = [{k: v for k, v in c.items() if k not in ("method", "part")} for c in trained]
    groups = group_configs(plain)
    assert len(groups) == 1 + 3 * len(s["replicas"]) + len(s["shard_counts"]) + 2
    n = min(SIZES[s["data"]], s["train_examples"] or SIZES[s["data"]])
    assert s["lbfgs_batch"] <= n and max(s["sandblaster_replicas"]) <= s["portions"]


def test_time_to_target_is_the_first_evaluation_at_or_above_it():
    assert dean2012.time_to([0.5, 0.79, 0.8, 0.7], [10, 20, 30, 40], 0.8) == 30
    assert dean2012.time_to([0.5, None, 0.9], [10, 20, 30], 0.8) == 30
    assert dean2012.time_to([0.5, 0.6], [10, 20], 0.8) is None


def _best(**to_target):
    """A hand-made summary: key 'method_replicas' -> time to target."""
    out = {}
    for k, v in to_target.items():
        m, r = k.rsplit("_", 1)
        out[(int(r), m)] = {"to_target": v}
    return out


def test_training_verdicts_by_hand():
    best = _best(single_1=100.0, downpour_sgd_4=60.0, downpour_adagrad_4=30.0, ssgd_4=40.0, sandblaster_16=50.0,
                 sandblaster_64=35.0)
    best[(64, "sandblaster")]["acc"] = [0.9]
    v = {c["claim"][:30]: c["ok"] for c in dean2012.training_verdicts(best, 0.8)}
    assert list(v.values()) == [True, True, True, True]
    # Adagrad slower than SGD somewhere, Sandblaster with more machines faster than Downpour + Adagrad
    best = _best(single_1=100.0, downpour_sgd_4=20.0, downpour_adagrad_4=30.0, sandblaster_16=25.0,
                 sandblaster_64=10.0)
    best[(64, "sandblaster")]["acc"] = [0.9]
    assert [c["ok"] for c in dean2012.training_verdicts(best, 0.8)] == [True, False, False, True]
    # Sandblaster never reaches the target with its most machines: it does not catch up
    best = _best(single_1=None, downpour_adagrad_4=30.0, sandblaster_16=None, sandblaster_64=None)
    best[(64, "sandblaster")]["acc"] = [0.5, None, 0.7]
    verdicts = dean2012.training_verdicts(best, 0.8)
    assert [c["ok"] for c in verdicts] == [True, True, False]
    assert "best accuracy reached 0.7000" in verdicts[-1]["text"]


def test_failure_and_speedup_verdicts_by_hand():
    rows = [dict(method="downpour_adagrad", replicas=8, down=40.0, lost=6.0),
            dict(method="ssgd", replicas=8, down=40.0, lost=41.0)]
    assert [c["ok"] for c in dean2012.failure_verdict(rows)] == [True]       # 6 <= 1.5 * 40 / 8, 41 >= 36
    rows[0]["lost"] = 8.0
    assert [c["ok"] for c in dean2012.failure_verdict(rows)] == [False]      # 8 > 7.5
    rows[0]["lost"], rows[1]["lost"] = 1.0, 30.0
    assert [c["ok"] for c in dean2012.failure_verdict(rows)] == [False]      # SSGD did not stall the whole time
    speech = dict(part="speedup", shape="speech", machines=[1, 4, 8, 16], speedup=[1.0, 2.0, 2.2, 1.9])
    image = dict(part="speedup", shape="image", machines=[1, 16, 81], speedup=[1.0, 7.0, 12.5],
                 sampled_mean=[1.0, 7.0, 12.4], sampled_std=[0.1, 0.1, 0.1])
    assert [c["ok"] for c in dean2012.speedup_verdicts([speech, image])[0]] == [True, True]
    speech["speedup"] = [1.0, 2.0, 2.2, 2.4]    # never slows down
    image["speedup"] = [1.0, 7.0, 6.0]           # stops gaining
    assert [c["ok"] for c in dean2012.speedup_verdicts([speech, image])[0]] == [False, False]


def test_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "dean"
    assert main(["dean2012", "--preset", "tiny", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 13
    sp = {r["shape"]: r for r in records if "shape" in r}
    assert sp["speech"]["machines"] == [1, 4, 8, 16] and sp["speech"]["speedup"][0] == pytest.approx(1.0)
    sb = [r for r in records if "lbfgs_batch" in r][0]
    assert len(sb["test_accuracy_per_epoch"]) == len(sb["sim_time_per_epoch"]) == 4
    assert all(b > a for a, b in zip(sb["sim_time_per_epoch"], sb["sim_time_per_epoch"][1:]))
    # each sharded config records one mean staleness per shard; with L > 0 the shards differ
    st = [r for r in records if r.get("network")]
    assert sorted(len(r["shard_staleness"]) for r in st) == [1, 1, 4, 4]
    spread = [r for r in st if r.get("shards") == 4 and r["shard_latency"] > 0][0]["shard_staleness"]
    assert max(spread) > min(spread)
    # the failed SSGD run ends at least the down time later than the failure-free one (same lr, same seed)
    fail = [r for r in records if r.get("failures") and r.get("server_rule") == "sync"][0]
    free = [r for r in records if r.get("server_rule") == "sync" and not r.get("failures")][0]
    down = fail["return_at"] - fail["fail_at"]
    assert fail["sim_time_per_epoch"][-1] - free["sim_time_per_epoch"][-1] >= 0.9 * down
    for name in ("model_parallel.png", "accuracy_vs_time.png", "time_to_accuracy.png", "staleness.png",
                 "failure.png", "report.md"):
        assert (out / name).stat().st_size > 1000, name
    report = (out / "report.md").read_text()
    for head in ("## 1. Model parallelism", "## 2. Accuracy against time", "## 3. Per-shard staleness",
                 "## 4. A replica failing"):
        assert head in report
    capsys.readouterr()
    assert main(["dean2012", "--preset", "tiny", "--out", str(out)]) == 0     # resumed: nothing runs again
    assert "ran 0 configs" in capsys.readouterr().out


@pytest.mark.parametrize("argv, word", [
    (["--sandblaster-replicas", "32"], "replicas <= portions"),
    (["--fail-at", "0.5", "--return-at", "0.4"], "--return-at"),
    (["--shard-counts", "1,300000"], "parameters"),
    (["--parts", "train", "--lbfgs-batch", "5000", "--portions", "16"], "larger than the training set"),
    (["--parts", "bogus"], "bogus"),
    (["--replicas", "1"], "--replicas"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, word):
    assert main(["dean2012", "--preset", "tiny", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err
