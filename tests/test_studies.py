"""The adam_vs_sgd and warmup studies: their config rules (hand-derived), end to end on tiny presets, bad input."""

import json
import math
from types import SimpleNamespace

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
    ctx = SimpleNamespace(settings=s, data=SimpleNamespace(num_train=1437))
    configs = warmup.make_configs(ctx)  # 1437 // 64 = 22 steps per epoch
    delayed = sorted(c["warmup_steps"] for c in configs if c["delay"] == s["delay"])
    assert delayed == [0, 11, 44]
    reference = [c for c in configs if c["delay"] == 0]
    assert len(reference) == 1 and reference[0]["warmup_steps"] == 0
    assert [c["method"] for c in configs] == ["no-delay", "warmup-0", "warmup-0.5", "warmup-2"]


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
    assert (out / "curves.png").exists()
    labelled = [{**r, "method": r["optimizer"]} for r in records]  # the configs' labels
    rows = adam_vs_sgd.analyse(labelled, [0, 4])["rows"]
    assert [(r["delay"], r["adam_batch"], r["adam_acc"]) for r in rows] == [
        (d, 128, next(x["test_accuracy"] for x in records if x["optimizer"] == "adam" and x["delay"] == d))
        for d in (0, 4)
    ]
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
    assert (out / "curves.png").exists()
    rows = warmup.summarize(records, 1437 // 128)
    assert [r["warmup_epochs"] for r in rows] == [0, 0, 1]
    assert [r["final"] for r in rows] == [r["test_accuracy"] for r in records]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["adam_vs_sgd", "--adam-lr-multipliers", "1,-2"], "--adam-lr-multipliers (each value) must be > 0"),
        (["adam_vs_sgd", "--adam-learning-rate", "0"], "--adam-learning-rate must be > 0"),
        (["adam_vs_sgd", "--delays", "0,-4"], "--delays (each value) must be >= 0"),
        (["adam_vs_sgd", "--adam-min-batch", "0"], "--adam-min-batch must be >= 1"),
        (["warmup", "--warmup-epochs", "0,-1"], "must be >= 0"),
        (["warmup", "--warmup-epochs", "0,1,1"], "'1' is given twice"),
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
