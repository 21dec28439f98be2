"""`python -m experiments`: help, bad input (one-line errors before anything compiles), the study end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*argv):
    return subprocess.run(
        [sys.executable, "-m", "experiments", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_help_lists_studies():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "delay_sweep" in proc.stdout


def test_unknown_study_is_one_clear_line():
    proc = run_cli("no_such_study")
    assert proc.returncode == 2
    assert "invalid choice: 'no_such_study'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_option():
    proc = run_cli("delay_sweep", "--no-such-option", "1")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def _error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert "error:" in err
    return err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--data", "nonsense"], "unknown data source"),
        (["--data", "idx:/definitely/not/here"], "does not exist"),
        (["--delays", "0,-1"], "--delays (each value) must be >= 0"),
        (["--learning-rates", "0.1,0"], "--learning-rates (each value) must be > 0"),
        (["--learning-rates", "abc"], "is not a number"),
        (["--learning-rates", "0.1,nan"], "'nan' is not a finite number"),
        (["--learning-rates", "0.1,,0.2"], "has an empty item"),
        (["--learning-rates", "0.1,0.2,0.1"], "'0.1' is given twice"),
        (["--batch-sizes", "0"], "--batch-sizes (each value) must be >= 1"),
        (["--batch-sizes", "5000"], "larger than the training set"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--chunk-size", "-1"], "--chunk-size must be >= 0"),
        (["--microbatch", "-1"], "--microbatch must be >= 0"),
        (["--optimizer", "adam", "--momentum", "0.5"], "--momentum applies only to --optimizer sgd (got adam)"),
    ],
)
def test_bad_input_one_line_error(capsys, tmp_path, argv, match):
    out = tmp_path / "out"
    err = _error_line(capsys, ["delay_sweep", "--preset", "tiny", "--out", str(out), *argv])
    assert match.lower() in err.lower(), err
    assert not (out / "results.jsonl").exists()  # stopped before training anything


def test_missing_idx_file_named(capsys, tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    err = _error_line(
        capsys, ["delay_sweep", "--preset", "tiny", "--data", f"idx:{tmp_path}", "--out", str(tmp_path / "o")]
    )
    assert "train-labels-idx1-ubyte" in err


def test_out_is_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    err = _error_line(capsys, ["delay_sweep", "--preset", "tiny", "--out", str(f)])
    assert "is a file" in err
    assert f.read_text() == "keep me"


def test_tiny_study_end_to_end_and_resume(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["delay_sweep", "--preset", "tiny", "--out", str(out)]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4  # 2 learning rates x 1 batch size x 2 delays
    assert (out / "heatmap.png").exists() and (out / "cliff.png").exists() and (out / "report.md").exists()
    assert json.loads((out / "study.json").read_text())["num_configs"] == 4
    assert not list(out.glob(".tmp-*"))  # figures written whole, then renamed into place
    required = {
        "config_id",
        "data",
        "model",
        "optimizer",
        "batch_size",
        "epochs",
        "seed",
        "momentum",
        "delay",
        "learning_rate",
        "test_accuracy",
        "test_loss",
        "train_loss",
        "test_accuracy_per_epoch",
        "test_loss_per_epoch",
        "diverged",
    }
    for r in records:
        assert required <= set(r)
        assert len(r["test_accuracy_per_epoch"]) == r["epochs"]
    by_lr = {(r["learning_rate"], r["delay"]): r for r in records}
    assert by_lr[(10.0, 0)]["diverged"] and by_lr[(10.0, 1)]["diverged"]
    assert not by_lr[(0.01, 0)]["diverged"]
    from experiments import delay_sweep

    assert delay_sweep.largest_stable(records, chance=0.1) == {(0, 128): 0.01, (1, 128): 0.01}
    capsys.readouterr()

    # The same command again: nothing to run, nothing rewritten.
    assert main(["delay_sweep", "--preset", "tiny", "--out", str(out)]) == 0
    assert "4 already in" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text().splitlines() == lines

    # A grown grid runs only the new configs and keeps the old lines as they were.
    assert main(["delay_sweep", "--preset", "tiny", "--out", str(out), "--delays", "0,1,2"]) == 0
    new_lines = (out / "results.jsonl").read_text().splitlines()
    assert new_lines[:4] == lines and len(new_lines) == 6


def test_micro_batches_keep_the_numbers(capsys, tmp_path):
    # The tiny preset's batch of 128 runs in micro-batches of 32 on a CPU ("auto"); --microbatch 0 takes the
    # whole batch at once. Same maths: the same records up to float32 rounding, the same config_ids.
    runs = {}
    for name, extra in (("auto", []), ("whole", ["--microbatch", "0"])):
        out = tmp_path / name
        assert main(["delay_sweep", "--preset", "tiny", "--learning-rates", "0.01,0.1", "--out", str(out), *extra]) == 0
        runs[name] = {r["config_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert runs["auto"].keys() == runs["whole"].keys() and len(runs["auto"]) == 4
    for cid, r in runs["auto"].items():
        w = runs["whole"][cid]
        assert not r["diverged"] and not w["diverged"]
        np.testing.assert_allclose(r["test_loss_per_epoch"], w["test_loss_per_epoch"], rtol=1e-4)
        np.testing.assert_allclose(r["train_loss"], w["train_loss"], rtol=1e-4)
        assert abs(r["test_accuracy"] - w["test_accuracy"]) <= 0.01


def test_truncated_last_line_is_kept_aside_not_fatal(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"config_id": "abc", "broken')  # a run killed mid-write
    assert (
        main(
            [
                "delay_sweep",
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--learning-rates",
                "0.01",
                "--delays",
                "0",
            ]
        )
        == 0
    )
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["learning_rate"] == 0.01
    assert (out / "results.jsonl.partial").read_text() == '{"config_id": "abc", "broken\n'  # kept aside
    assert "moved the cut-off last line" in capsys.readouterr().out


def _rec(delay, lr, diverged, batch=64, acc=0.9):
    return {
        "delay": delay,
        "learning_rate": lr,
        "batch_size": batch,
        "diverged": diverged,
        "test_accuracy": 0.1 if diverged else acc,
    }


def test_largest_stable_learning_rate_and_report():
    from experiments import delay_sweep

    records = [
        _rec(0, 0.01, False),
        _rec(0, 0.1, False),
        _rec(0, 1.0, True),  # cliff between 0.1 and 1
        _rec(2, 0.01, False),
        _rec(2, 0.1, True),
        _rec(2, 1.0, True),  # moved down with delay
        _rec(8, 0.01, True),
        _rec(8, 0.1, True),
        _rec(8, 1.0, True),  # everything diverged
        _rec(0, 0.1, True, batch=256),
        _rec(0, 0.01, False, batch=256),
        _rec(2, 0.1, False, batch=256),
        _rec(2, 0.01, False, batch=256),  # grew at batch 256
        _rec(8, 0.01, False, batch=256),
        _rec(8, 0.1, True, batch=256),
    ]
    records.append({**_rec(2, 0.01, True), "seed": 1})  # a second seed of (2, 0.01) diverged: not stable
    stable = delay_sweep.largest_stable(records)
    assert stable == {
        (0, 64): 0.1,
        (2, 64): None,
        (8, 64): None,
        (0, 256): 0.01,
        (2, 256): 0.1,
        (8, 256): 0.01,
    }
    # past the cliff, a run that ends at chance accuracy without the diverged flag fails given ``chance``
    at_chance = {**_rec(0, 0.3, False, batch=256), "test_accuracy": 0.12}
    assert delay_sweep.largest_stable(records + [at_chance])[(0, 256)] == 0.3
    assert delay_sweep.largest_stable(records + [at_chance], chance=0.1)[(0, 256)] == 0.01
    assert delay_sweep.largest_stable(records + [{**at_chance, "test_accuracy": 0.16}], chance=0.1)[(0, 256)] == 0.3
    settings = {"model": "lenet5", "optimizer": "sgd", "momentum": 0.9, "epochs": 3, "seeds": [0, 1]}
    text = delay_sweep.report(settings, records, stable, "toy")
    assert "| 2 | all diverged | 0.1 |" in text
    assert (
        "batch 64: the largest stable learning rate went from 0.1 at delay 0 to all diverged at delay 8; "
        "it never grew with delay." in text
    )
    assert (
        "batch 256: the largest stable learning rate went from 0.01 at delay 0 to 0.01 at delay 8; "
        "it grew with delay at least once." in text
    )
