"""The adam_vs_sgd and warmup studies: their config rules (hand-derived), end to end on tiny presets, bad input."""

import json
import math

import pytest

from experiments import adam_vs_sgd, warmup
from experiments.__main__ import main


@pytest.mark.parametrize(
    "delay, expected",
    [
        (0, (1e-3, 1024)),  # one worker: the base setting
        (1, (5e-4, 512)),  # two workers: halved once
        (3, (2.5e-4, 256)),  # four workers: halved twice
        (31, (1e-3 / 32, 32)),  # 32 workers: five halvings
        (255, (1e-3 / 256, 8)),  # 256 workers: 1024 / 256 = 4, floored at 8
    ],
)
def test_adam_heuristic_halves_per_doubling(delay, expected):
    lr, batch = adam_vs_sgd.adam_heuristic(delay, 1e-3, 1024, 8)
    assert math.isclose(lr, expected[0], rel_tol=1e-12)
    assert batch == expected[1]


def test_warmup_configs_convert_epochs_to_steps():
    s = dict(warmup.PRESETS["quick"], learning_rates=[0.01], warmup_epochs=[0, 2, 0.5], seeds=[0])
    configs = warmup.make_configs(s, num_train=1437)  # 1437 // 64 = 22 steps per epoch
    delayed = sorted(c["warmup_steps"] for c in configs if c["delay"] == s["delay"])
    assert delayed == [0, 11, 44]
    reference = [c for c in configs if c["delay"] == 0]
    assert len(reference) == 1 and reference[0]["warmup_steps"] == 0


def test_adam_vs_sgd_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "avs"
    assert main(["adam_vs_sgd", "--preset", "tiny", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # SGD: 1 lr x 2 delays; Adam: 2 delays (one heuristic setting each).
    assert sorted((r["optimizer"], r["delay"]) for r in records) == [
        ("adam", 0),
        ("adam", 4),
        ("sgd", 0),
        ("sgd", 4),
    ]
    adam4 = next(r for r in records if r["optimizer"] == "adam" and r["delay"] == 4)
    assert math.isclose(adam4["learning_rate"], 2e-3 / 5, rel_tol=1e-6)  # halved per doubling of 5 workers
    assert adam4["batch_size"] == 128  # round(128 / 5) = 26, raised to the preset's floor of 128
    assert (out / "curves.png").stat().st_size > 10_000
    text = (out / "report.md").read_text()
    assert "| delay |" in text and "**The paper**" in text
    assert "ran 4 configs" in capsys.readouterr().out


def test_warmup_tiny_end_to_end(tmp_path):
    out = tmp_path / "wu"
    assert main(["warmup", "--preset", "tiny", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["delay"], r["warmup_steps"]) for r in records) == [
        (0, 0),
        (2, 0),
        (2, 11),
    ]  # 1437 // 128
    assert (out / "curves.png").stat().st_size > 10_000
    assert "warm-up 1 epochs" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["adam_vs_sgd", "--adam-lr-multipliers", "1,-2"], "multipliers must all be positive"),
        (["adam_vs_sgd", "--adam-learning-rate", "0"], "must be a positive number"),
        (["adam_vs_sgd", "--delays", "0,-4"], "delay must be a non-negative"),
        (["adam_vs_sgd", "--adam-min-batch", "0"], "must be a positive integer"),
        (["warmup", "--warmup-epochs", "0,-1"], "must be >= 0"),
        (["warmup", "--batch-sizes", "3"], None),  # an unknown option: argparse's exit 2
        (["warmup", "--batch-size", "100000"], "larger than the training set"),
    ],
)
def test_bad_input(tmp_path, capsys, argv, match):
    argv = [*argv, "--preset", "tiny", "--out", str(tmp_path / "o")]
    if match is None:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
    assert not (tmp_path / "o" / "results.jsonl").exists()
