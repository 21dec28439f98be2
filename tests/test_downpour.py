"""The downpour study: its introduction schedules (hand-derived), end to end on tiny, bad input."""

import json

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
    configs = downpour.make_configs(s, num_train=1437)
    methods = sorted(downpour.method_of(c) for c in configs)
    assert methods == sorted(["sgd", "sgd+warm", "sgd+gradual", "adagrad", "adagrad+warm", "adagrad+gradual",
                              "ssgd"])
    for c in configs:
        # 4 workers, the last round(0.25 * 4) = 1 of them 4x slower, in every method.
        assert c["workers"] == 4 and c["straggler_fraction"] == 0.25 and c["straggler_slowdown"] == 4.0
    assert {c["optimizer"] for c in configs if downpour.method_of(c).startswith("adagrad")} == {"adagrad"}


def test_accuracy_within_a_time_budget():
    b = {"time": [10.0, 20.0, 30.0], "acc": [0.5, 0.6, 0.7]}
    assert downpour.accuracy_at(b, 25.0) == 0.6
    assert downpour.accuracy_at(b, 30.0) == 0.7
    assert downpour.accuracy_at(b, 5.0) is None


def test_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "dp"
    assert main(["downpour", "--preset", "tiny", "--intros", "none,warm", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by = {downpour.method_of(r): r for r in records}
    assert sorted(by) == ["adagrad", "adagrad+warm", "sgd", "sgd+warm", "ssgd"]
    # SSGD waits for the straggler (4x slower) every round; ASGD does not: more simulated time per gradient.
    assert by["ssgd"]["sim_time_per_epoch"][0] > 1.5 * by["sgd"]["sim_time_per_epoch"][0]
    # 22 gradients: 4 workers throughout leave 3 in flight (19 steps); the warm start's one worker steps on
    # each of its first 11, then the 3 joining workers fill the pool again: also 19 steps.
    assert by["sgd"]["server_steps_per_epoch"] == [22 - 3]
    assert by["sgd+warm"]["server_steps_per_epoch"][0] == 22 - 3
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "best_per_method.png"):
        assert (out / name).stat().st_size > 10_000, name
    text = (out / "report.md").read_text()
    assert "**The paper (PAPERS §2):**" in text and "Adagrad vs SGD server" in text and "Stragglers:" in text
    assert "ran 5 configs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optimizers", "sgd,rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--intros", "slow"], "unknown intro 'slow'"),
        (["--workers", "0"], "--workers must be >= 2"),
        (["--warm-epochs", "-1"], "--warm-epochs must be > 0"),
        (["--straggler-fraction", "1.5"], "straggler_fraction must be in [0, 1]"),
        (["--sgd-learning-rates", "-0.1"], "learning_rate must be a positive number"),
    ],
)
def test_bad_input_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "o"
    assert main(["downpour", "--preset", "tiny", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
    assert not (out / "results.jsonl").exists()
