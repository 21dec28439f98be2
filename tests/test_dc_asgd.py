"""The dc_asgd study: its config rules, its summary against hand-made records, end to end on tiny, bad input."""

import json
from types import SimpleNamespace

import jax
import pytest

from experiments import dc_asgd
from experiments.__main__ import main


def _settings(**kw):
    return {**dc_asgd.PRESETS["tiny"], **kw}


def _configs(s, num_train=1437):
    return dc_asgd.make_configs(SimpleNamespace(settings=s, data=SimpleNamespace(num_train=num_train)))


def _labelled(records, s):
    """The records with the method label of their config (results.jsonl keys them by config_id)."""
    label = {dc_asgd.STUDY.config_id(c): c["method"] for c in _configs(s)}
    return [{**r, "method": label[r["config_id"]]} for r in records]


def test_configs_per_method_and_worker_count():
    s = _settings(workers=[2, 4], learning_rates=[0.1, 0.2], lambdas_c=[0.04, 1.0], lambdas_a=[2.0])
    configs = _configs(s)
    by = {}
    for c in configs:
        by.setdefault((c["method"], c["workers"]), []).append(c)
    # sequential SGD: one worker, per learning rate; per M: asgd 2 lrs, ssgd 2, dc-c 2 x 2, dc-a 2 x 1.
    assert {k: len(v) for k, v in by.items()} == {
        ("sgd", 1): 2, ("asgd", 2): 2, ("asgd", 4): 2, ("ssgd", 2): 2, ("ssgd", 4): 2,
        ("dc-c", 2): 4, ("dc-c", 4): 4, ("dc-a", 2): 2, ("dc-a", 4): 2,
    }
    assert all(c["system"] == "async" and c["max_workers"] == 4 for c in configs)  # one program per method
    assert sorted({c["dc_lambda"] for c in by[("dc-c", 2)]}) == [0.04, 1.0]
    assert all(c["server_rule"] == "sync" for c in by[("ssgd", 4)])
    assert all("dc_lambda" not in c for c in by[("asgd", 4)])


def _record(m, method, lr, lam, acc, times):
    r = {"method": method, "workers": m, "learning_rate": lr, "test_accuracy": acc[-1], "test_accuracy_per_epoch": acc,
         "sim_time_per_epoch": times, "diverged": False, "max_workers": 8, "server_rule": "async"}
    if method == "ssgd":
        r["server_rule"] = "sync"
    elif method in ("dc-c", "dc-a"):
        r["compensation"], r["dc_lambda"] = method, lam
    return r


def test_summary_picks_the_best_setting_and_reports_the_m8_comparison():
    records = [
        _record(1, "sgd", 0.1, None, [0.5, 0.9], [10.0, 20.0]),
        _record(8, "asgd", 0.1, None, [0.4, 0.8], [2.0, 4.0]),
        _record(8, "asgd", 0.2, None, [0.5, 0.85], [2.0, 4.0]),
        _record(8, "dc-a", 0.1, 0.5, [0.5, 0.86], [2.0, 4.0]),
        _record(8, "dc-a", 0.1, 2.0, [0.6, 0.84], [2.0, 4.0]),
        _record(8, "dc-c", 0.1, 0.04, [0.6, 0.83], [2.0, 4.0]),
        _record(8, "ssgd", 0.1, None, [0.6, 0.82], [3.0, 6.0]),
    ]
    best = dc_asgd.summarize(records, [8])
    assert best[(8, "asgd")]["setting"] == (0.2, None) and best[(8, "asgd")]["final"] == 0.85
    assert best[(8, "dc-a")]["setting"] == (0.1, 0.5) and best[(8, "dc-a")]["peak"] == 0.86
    assert best[(8, "sgd")]["final"] == 0.9  # sequential SGD is copied into every M
    line = dc_asgd.headline(best)
    assert "0.8600 against ASGD's 0.8500: +1.00 points" in line and "held" in line
    text = "\n".join(dc_asgd.findings(best, [8], list(dc_asgd.METHODS)))
    # 0.86 > 0.83 > 0.82 but SSGD 0.82 < ASGD 0.85: the paper's whole ordering did not hold.
    assert "DC-ASGD-a ≥ DC-ASGD-c: held (+3.00 points)" in text
    assert "SSGD ≥ ASGD: did not hold (-3.00 points)" in text and "whole ordering" in text
    assert "did not hold" in text.split("whole ordering")[1]


def test_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "dc"
    assert main(["dc_asgd", "--preset", "tiny", "--workers", "3", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    records = _labelled(records, _settings(workers=[3]))
    assert sorted(r["method"] for r in records) == ["asgd", "dc-a", "dc-c", "sgd", "ssgd"]
    steps = 1437 // 64
    for r in records:
        assert len(r["sim_time_per_epoch"]) == 1 and r["sim_time_per_epoch"][0] > 0
        served = r["server_steps_per_epoch"][0]
        # One gradient per step: sgd applies each, asgd/dc leave M - 1 in flight, ssgd steps once per round.
        expected = {"sgd": steps, "asgd": steps - 2, "dc-c": steps - 2, "dc-a": steps - 2, "ssgd": steps // 3}
        assert served == expected[r["method"]], r
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "best_per_method.png", "lambda.png"):
        assert (out / name).exists(), name
    assert "**The paper (Zheng et al. 2017):**" in (out / "report.md").read_text()
    best = dc_asgd.summarize(records, [3])
    for method in ("asgd", "ssgd", "dc-c", "dc-a"):
        (r,) = [x for x in records if x["method"] == method]
        assert best[(3, method)]["final"] == r["test_accuracy"]
    assert "ran 5 configs" in capsys.readouterr().out
    # Rerun: nothing left to do, the same results file.
    before = (out / "results.jsonl").read_bytes()
    assert main(["dc_asgd", "--preset", "tiny", "--workers", "3", "--out", str(out)]) == 0
    assert (out / "results.jsonl").read_bytes() == before
    assert "ran 0 configs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--methods", "asgd,hogwild"], "unknown 'hogwild'"),
        (["--lambdas-c", "0.04,-1"], "--lambdas-c (each value) must be >= 0, got -1"),
        (["--lambdas-a", "-2"], "--lambdas-a (each value) must be >= 0"),
        (["--workers", "0,4"], "--workers (each value) must be >= 2, got 0"),
        (["--workers", "4,4"], "'4' is given twice"),
        (["--model", "resnet50"], "--model: unknown 'resnet50'; choose from lenet5, mlp, resnet20"),
        (["--timing", "pareto"], "--timing: unknown 'pareto'"),
        (["--timing", "fixed", "--time-spread", "0.1"], "--time-spread does not apply to --timing fixed"),
        (["--batch-size", "100000"], "larger than the training set"),
    ],
)
def test_bad_input_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "o"
    assert main(["dc_asgd", "--preset", "tiny", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err
    assert not (out / "results.jsonl").exists()


def test_paper_preset_runs_resnet20_on_mock_cifar10(tmp_path, capsys):
    """The paper preset end to end (ResNet-20, tfds:cifar10, batch 128, max_workers 8) with the work cut down.

    tfds.testing.mock_data stands in for CIFAR-10 (random 32x32x3 uint8 images, 10 classes, no download);
    1152 images make 9 steps of batch 128 in 1 epoch. ASGD and DC-ASGD-a at M = 8 (the preset's largest M,
    so the same compiled programs as the preset's), one learning rate and lambda0: 2 programs, 1 config each.
    No --loop: on a CPU the default 'auto' must pick jitted steps for ResNet-20 (XLA:CPU runs its convolution
    gradients far slower inside the epoch's scan) and say so.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "paper"
    argv = ["dc_asgd", "--preset", "paper", "--data-dir", str(tmp_path), "--epochs", "1",
            "--methods", "asgd,dc-a", "--workers", "8", "--learning-rates", "0.1", "--lambdas-a", "2",
            "--out", str(out)]
    with tfds.testing.mock_data(num_examples=1152):
        assert main(argv) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted("dc-a" if r.get("compensation") else "asgd" for r in records) == ["asgd", "dc-a"]
    for r in records:
        assert r["model"] == "resnet20" and r["data"] == "tfds:cifar10" and r["batch_size"] == 128
        assert r["workers"] == r["max_workers"] == 8
        assert r["server_steps_per_epoch"] == [9 - 7], r  # 9 gradients, M - 1 = 7 still in flight
        assert not r["diverged"] and 0.0 <= r["test_accuracy"] <= 1.0
    text = (out / "report.md").read_text()
    assert text.startswith("# DC-ASGD (Zheng et al. 2017) — resnet20 on tfds:cifar10")
    assert "GroupNorm instead of the paper's BatchNorm" in text
    printed = capsys.readouterr().out
    assert "ran 2 configs" in printed
    if jax.default_backend() == "cpu":
        assert "ResNet-20 on a CPU: jitted steps driven from Python (--loop step)" in printed


def test_paper_preset_follows_zheng_et_al():
    p = dc_asgd.PRESETS["paper"]
    assert p["model"] == "resnet20" and p["data"] == "tfds:cifar10" and p["workers"] == [4, 8]
    assert 0.04 in p["lambdas_c"] and 2.0 in p["lambdas_a"]  # the paper's defaults are in the grids
    assert p["momentum"] == 0.0 and p["methods"] == list(dc_asgd.METHODS)


def test_time_panel_with_no_positive_time_stays_linear(tmp_path, monkeypatch):
    """accuracy_vs_time with M - 1 >= gradients per epoch: a panel whose times are all 0 (no server step yet).

    Log-scaling it made matplotlib warn 'Data has no positive values, and therefore cannot be log-scaled';
    such a panel keeps a linear x axis, the others are log-scaled.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from experiments import plots

    panels = {"M = 16": [dict(label="asgd", x=[0.0, 0.0], y=[0.1, 0.1])],
              "M = 4": [dict(label="asgd", x=[2.0, 4.0], y=[0.5, 0.6])]}
    seen = []
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen.extend(ax.get_xscale() for ax in fig.axes)
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.accuracy_panels(panels, str(tmp_path / "t.png"), xlabel="time", logx=True)
    assert seen == ["linear", "log"]
    assert (tmp_path / "t.png").stat().st_size > 0
    plt.close("all")
