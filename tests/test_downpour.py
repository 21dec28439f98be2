"""The downpour study: its introduction schedules (hand-derived), end to end on tiny, bad input."""

import json
from types import SimpleNamespace

import pytest

from experiments import downpour
from experiments.__main__ import main


def test_intro_schedules():
    s = dict(downpour.PRESETS["tiny"], workers=4, warm_epochs=0.5, batch_size=64)
    w = downpour.intro_steps(s, num_train=1437)  # 1437 // 64 = 22 gradients per epoch; half: 11
    assert w == 11
    assert downpour.intro_hparams("none", 4, w) == {"initial_workers": 0}
    assert downpour.intro_hparams("warm", 4, w) == {"initial_workers": 1, "add_workers": 3, "add_every": 11}
    assert downpour.intro_hparams("gradual", 4, w) == {"initial_workers": 1, "add_workers": 1, "add_every": 3}
    configs = downpour.make_configs(SimpleNamespace(settings=s, data=SimpleNamespace(num_train=1437)))
    methods = sorted(c["method"] for c in configs)
    assert methods == sorted(["sgd", "sgd+warm", "sgd+gradual", "adagrad", "adagrad+warm", "adagrad+gradual",
                              "ssgd"])
    for c in configs:
        # 4 workers, the last round(0.25 * 4) = 1 of them 4x slower, in every method.
        assert c["workers"] == 4 and c["straggler_fraction"] == 0.25 and c["straggler_slowdown"] == 4.0
    assert {c["optimizer"] for c in configs if c["method"].startswith("adagrad")} == {"adagrad"}


def test_accuracy_within_a_time_budget():
    b = {"time": [10.0, 20.0, 30.0], "acc": [0.5, 0.6, 0.7]}
    assert downpour.accuracy_at(b, 25.0) == 0.6
    assert downpour.accuracy_at(b, 30.0) == 0.7
    assert downpour.accuracy_at(b, 5.0) is None


def test_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "dp"
    assert main(["downpour", "--preset", "tiny", "--intros", "none,warm", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    s = dict(downpour.PRESETS["tiny"], intros=["none", "warm"])
    configs = downpour.make_configs(SimpleNamespace(settings=s, data=SimpleNamespace(num_train=1437)))
    label = {downpour.STUDY.config_id(c): c["method"] for c in configs}
    by = {label[r["config_id"]]: r for r in records}
    assert sorted(by) == ["adagrad", "adagrad+warm", "sgd", "sgd+warm", "ssgd"]
    # SSGD waits for the straggler (4x slower) every round; ASGD does not: more simulated time per gradient.
    assert by["ssgd"]["sim_time_per_epoch"][0] > 1.5 * by["sgd"]["sim_time_per_epoch"][0]
    # 22 gradients: 4 workers throughout leave 3 in flight (19 steps); the warm start's one worker steps on
    # each of its first 11, then the 3 joining workers fill the pool again: also 19 steps.
    assert by["sgd"]["server_steps_per_epoch"] == [22 - 3]
    assert by["sgd+warm"]["server_steps_per_epoch"][0] == 22 - 3
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "best_per_method.png"):
        assert (out / name).exists(), name
    assert "**The paper (Dean et al. 2012):**" in (out / "report.md").read_text()
    best = downpour.async_results.best_settings([{**r, "method": m} for m, r in by.items()], lambda r: "all",
                                                 lambda r: (r["learning_rate"],))
    assert {m: b["final"] for (_, m), b in best.items()} == {m: r["test_accuracy"] for m, r in by.items()}
    assert "ran 5 configs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optimizers", "sgd,rmsprop"], "--optimizers (each value): unknown 'rmsprop'"),
        (["--intros", "slow"], "--intros (each value): unknown 'slow'"),
        (["--intros", "warm,,none"], "has an empty item"),
        (["--workers", "0"], "--workers must be >= 2"),
        (["--warm-epochs", "-1"], "--warm-epochs must be > 0"),
        (["--straggler-fraction", "1.5"], "--straggler-fraction must be <= 1"),
        (["--sgd-learning-rates", "-0.1"], "--sgd-learning-rates (each value) must be > 0"),
    ],
)
def test_bad_input_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "o"
    assert main(["downpour", "--preset", "tiny", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
    assert not (out / "results.jsonl").exists()
