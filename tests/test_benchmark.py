"""The benchmark study: its FLOP count (hand-derived) and a tiny end-to-end run."""

import json

from experiments import benchmark
from experiments.__main__ import main


def test_lenet5_flops_hand_derived():
    # Forward multiply-adds: conv1 28*28*25*6 = 117 600, conv2 10*10*150*16 = 240 000,
    # dense 400*120 + 120*84 + 84*10 = 58 920; backward = weight grads (all) + input grads (not conv1).
    assert benchmark.lenet5_flops_per_sample() == 2 * (117_600 * 2 + 240_000 * 3 + 58_920 * 3)
    # Three input channels triple conv1's count only.
    assert benchmark.lenet5_flops_per_sample(channels=3) - benchmark.lenet5_flops_per_sample() == 2 * 2 * 2 * 117_600


def test_matmul_peak_is_plausible():
    peak = benchmark.matmul_peak_flops(n=256, repeats=3)
    assert 1e8 < peak < 1e14


def test_tiny_benchmark_writes_summary(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--only", "throughput", "--batch-sizes", "32", "--configs", "2", "--samples", "128"]
    assert main([*argv, "--out", str(out)]) == 0
    info = json.loads((out / "benchmark.json").read_text())
    drivers = [r["driver"] for r in info["rows"]]
    assert sum(r.get("engine", False) for r in info["rows"]) == 1 and len(drivers) == 6
    assert all(r["config_samples_per_s"] > 0 for r in info["rows"])
    (row,) = info["summary"]
    eng = next(r["config_samples_per_s"] for r in info["rows"] if r.get("engine"))
    assert row["engine_fraction_of_peak"] == eng * info["lenet5_flops_per_sample"] / info["matmul_peak_flops"]
    assert row["ratio_engine_to_torch"] is None  # no --torch
    assert "of peak" in capsys.readouterr().out


def test_bad_batch_size_is_one_line_error(tmp_path, capsys):
    assert main(["benchmark", "--batch-sizes", "64", "--samples", "32", "--out", str(tmp_path / "b")]) != 0
    assert "--batch-sizes" in capsys.readouterr().err


def test_overhead_table_times_every_system_per_gradient(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--only", "overhead", "--batch-sizes", "8", "--samples", "64", "--workers", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = json.loads((out / "benchmark.json").read_text())["overhead"]
    names = [r["variant"] for r in rows]
    for expected in ("plain optax SGD", "AD-PSGD, 2 models, network", "D-PSGD, 2 models, ring",
                     "async 2, pure, network", "2 separate runs, vmapped"):
        assert expected in names
    plain = next(r for r in rows if r["variant"] == "plain optax SGD")
    assert plain["ratio_to_plain"] == 1.0
    for r in rows:
        assert r["ms_per_step"] > 0
        assert abs(r["ratio_to_plain"] - r["ms_per_step"] / plain["ms_per_step"]) < 1e-9 * r["ratio_to_plain"]
