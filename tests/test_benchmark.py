"""The benchmark study: its FLOP count (hand-derived) and a tiny end-to-end run."""

import json

import pytest

from experiments import asgrad_numpy, benchmark
from experiments.__main__ import main

TINY_ASGRAD = dict(iterations=20, numpy_iterations=5, rounds=1, samples_per_worker=10, dim=4, workers=3, seeds=(0, 1),
                   step_sizes=[0.5, 0.25], pause=0.0)


@pytest.fixture(autouse=True)
def _tiny_asgrad(monkeypatch):
    """The asgrad comparison (part of --only throughput and the default run) at a tiny size: seconds."""
    monkeypatch.setattr(asgrad_numpy, "BENCHMARK", TINY_ASGRAD)


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
    assert len(info["matmul_peak_measurements"]) == 2  # before the batch size's rows and after: the highest
    assert info["matmul_peak_flops"] == max(info["matmul_peak_measurements"])
    assert row["ratio_engine_to_torch"] is None  # no --torch
    assert "memory" not in info  # the memory table runs with --only memory and in the default run, not here
    assert info["asgrad"]["ratio"] > 0  # the asgrad comparison runs with --only throughput too
    assert "of peak" in capsys.readouterr().out


def test_microbatch_table_compares_micro_batches_with_the_whole_batch(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--only", "microbatch", "--batch-sizes", "32", "--samples", "128", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "benchmark.json").read_text())["microbatch"]
    assert [(r["batch_size"], r["microbatch"]) for r in rows] == [(32, 0), (32, 16)]  # only sizes below the batch
    whole, micro = rows
    assert whole["ratio_to_whole_batch"] == 1.0 and whole["config_samples_per_s"] > 0
    assert micro["ratio_to_whole_batch"] == micro["config_samples_per_s"] / whole["config_samples_per_s"]
    assert "x whole batch" in capsys.readouterr().out


def test_bad_batch_size_is_one_line_error(tmp_path, capsys):
    assert main(["benchmark", "--batch-sizes", "64", "--samples", "32", "--out", str(tmp_path / "b")]) != 0
    assert "--batch-sizes" in capsys.readouterr().err


def test_overhead_table_times_every_system_per_gradient(tmp_path, capsys, monkeypatch):
    import functools

    from asgd_jax import MLP

    # one round of 2 timed steps per row (the table's own 7 rounds of 60 steps are for measuring, not testing), of a
    # small MLP instead of LeNet-5: each of the ~30 rows compiles its own step
    monkeypatch.setattr(benchmark, "_overhead", functools.partial(benchmark._overhead, rounds=1, steps=2,
                                                                  model=MLP(hidden=(8,))))
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
        assert r["copied_mib"] >= 0


def test_copied_bytes_sums_the_copy_instructions_of_every_computation():
    """Hand-counted: 16 x 400 x 120 float32 + 6 bfloat16 + 3 int32 copies; other instructions and a copy inside a
    fusion (no buffer of its own) do not count."""
    text = """
%fused_computation.4 (param_0: f32[8,9]) -> f32[9,8] {
  %transpose.1 = f32[9,8]{0,1} transpose(%param_0), dimensions={1,0}
  ROOT %copy.3 = f32[9,8]{1,0} copy(%transpose.1)
}
%region_1 (arg: (f32[16,400,120])) -> f32[16,400,120] {
  %copy.1 = f32[16,400,120]{2,1,0} copy(%get-tuple-element.3)
  %add.2 = f32[16,400,120]{2,1,0} add(%copy.1, %copy.1)
}
ENTRY %main (p: bf16[6], q: s32[3]) -> (bf16[6], s32[3]) {
  %copy.7 = bf16[6]{0} copy(%p), metadata={op_name="p"}
  ROOT %copy.9 = s32[3]{0} copy(%q)
  %wrapped_copy = f32[5,5]{1,0} fusion(%p), kind=kLoop, calls=%wrapped_copy_computation
  %t = f32[9,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation.4, metadata={op_name="t"}
}"""
    assert benchmark.copied_bytes(text) == 16 * 400 * 120 * 4 + 6 * 2 + 3 * 4
    assert benchmark.copied_bytes("ENTRY %main () -> f32[] {\n  ROOT %c = f32[] constant(0)\n}") == 0


def test_transformer_benchmark_tokens_per_second(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--only", "transformer", "--transformer", "transformer:layers=1,width=16,heads=2,context=8",
            "--text-batch-sizes", "4", "--text-steps", "3", "--out", str(out)]
    assert main(argv) == 0
    info = json.loads((out / "benchmark.json").read_text())
    rows = info["transformer"]
    assert [r["driver"] for r in rows][1] == "scan, K=1" and sum(r["engine"] for r in rows) == 1
    assert all(r["tokens_per_s"] > 0 and r["batch_size"] == 4 for r in rows)
    assert "config-tokens/s" in capsys.readouterr().out


def test_torch_transformer_matches_the_flax_one():
    """The PyTorch baseline is the same network: equal parameter count, and equal logits with copied weights."""
    torch = __import__("pytest").importorskip("torch")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from asgd_jax import count_params, make_model
    from experiments import torch_baseline

    model = make_model("transformer:layers=1,width=16,heads=2,context=8", 256)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    net = torch_baseline.make_transformer(256, layers=1, width=16, heads=2, context=8)
    assert sum(p.numel() for p in net.parameters()) == count_params(params)
    p = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), params)
    b, blk = p["block0"], net.blocks[0]
    with torch.no_grad():
        net.embed.weight.copy_(p["embed"]["embedding"])
        net.pos.copy_(p["pos_embedding"])
        for tln, fln in ((blk.ln1, b["ln1"]), (blk.ln2, b["ln2"]), (net.ln, p["ln_final"])):
            tln.weight.copy_(fln["scale"])
            tln.bias.copy_(fln["bias"])
        qkv = [b["attn"][k] for k in ("query", "key", "value")]  # kernels (D, H, Dh) -> rows of in_proj (D_out, D_in)
        blk.attn.in_proj_weight.copy_(torch.cat([q["kernel"].reshape(16, 16).T for q in qkv]))
        blk.attn.in_proj_bias.copy_(torch.cat([q["bias"].reshape(16) for q in qkv]))
        blk.attn.out_proj.weight.copy_(b["attn"]["out"]["kernel"].reshape(16, 16).T)
        blk.attn.out_proj.bias.copy_(b["attn"]["out"]["bias"])
        for lin, fl in ((blk.mlp[0], b["mlp_in"]), (blk.mlp[2], b["mlp_out"]), (net.head, p["head"])):
            lin.weight.copy_(fl["kernel"].T)
            lin.bias.copy_(fl["bias"])
        tokens = np.random.default_rng(0).integers(0, 256, (2, 8))
        want = net(torch.tensor(tokens)).numpy()
    got = np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_memory_table_measures_at_least_the_training_state(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--only", "memory", "--batch-sizes", "32", "--samples", "128", "--memory-configs", "1,3"]
    assert main([*argv, "--out", str(out)]) == 0
    info = json.loads((out / "benchmark.json").read_text())
    mem = info["memory"]
    assert "rows" not in info and mem["group_sizes"] == [1, 3]  # the memory table alone
    (row,) = mem["rows"]
    assert row["batch_size"] == 32 and row["max_delay"] == 8
    # Hand count: LeNet-5 has 61 706 float32 parameters (156 + 2 416 + 48 120 + 10 164 + 850). A config's state
    # holds them, SGD's momentum and the delay buffer of max_delay + 1 = 9 gradients: 11 copies at least.
    state = 11 * 61_706 * 4
    assert row["measured_bytes_per_config"] >= state
    assert row["estimate_bytes_per_config"] >= state
    # The data set (128 float32 28x28 images + int32 labels, train and test alike) is an argument of every program.
    data = 2 * 128 * (28 * 28 * 4 + 4)
    assert row["data_bytes"] == data
    for k, p in row["programs"].items():
        assert p["argument_bytes"] >= data + int(k) * state
        assert p["total_bytes"] == p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"]
    one, three = row["programs"]["1"]["total_bytes"], row["programs"]["3"]["total_bytes"]
    assert row["measured_bytes_per_config"] == (three - one) / 2
    # The estimate the engine plans with stays within 30 % of XLA's figure for LeNet-5.
    assert 0.77 < row["estimate_bytes_per_config"] / row["measured_bytes_per_config"] < 1.3
    # Largest groups: 80 % of 24 GiB / 80 GiB, less the shared part, over the per-config bytes.
    # On a CPU the GPU column is the program with a GPU's defaults (here: the 128 test images in one chunk, not
    # chunks of 100), compiled here too.
    assert ("whole_batch" in row) == (row["eval_chunk"] != 128)
    for label, gib in (("24 GiB CPU", 24), ("80 GiB GPU", 80)):
        fit = row["fits"][label]
        r = row["whole_batch"] if label.endswith("GPU") and "whole_batch" in row else row
        shared = r["programs"]["1"]["total_bytes"] - r["measured_bytes_per_config"]
        assert fit["configs_by_measured"] == int((0.8 * gib * 2**30 - shared) // r["measured_bytes_per_config"])
        assert fit["configs_by_estimate"] == int((0.8 * gib * 2**30 - data) // r["estimate_bytes_per_config"])
        assert fit["configs_by_measured"] > 100  # a LeNet-5 config needs megabytes, not gigabytes
    assert "memory per config" in capsys.readouterr().out


def test_memory_table_sizes_the_gpu_column_for_the_whole_batch():
    """Where the CPU takes micro-batches (LeNet-5, batch >= 128), the GPU column comes from the whole batch."""
    import jax

    from experiments import bench_memory
    from experiments.benchmark import random_mnist_dataset

    if jax.default_backend() != "cpu":
        pytest.skip("the CPU's micro-batch rule")
    mem = bench_memory.memory_table(random_mnist_dataset(160), [128], (1, 2))
    (row,) = mem["rows"]
    cpu, gpu, whole = row["fits"]["24 GiB CPU"], row["fits"]["80 GiB GPU"], row["whole_batch"]
    assert row["microbatch"] == cpu["microbatch"] == 32 and gpu["microbatch"] is None
    for fit, r, gib in ((cpu, row, 24), (gpu, whole, 80)):
        shared = r["programs"]["1"]["total_bytes"] - r["measured_bytes_per_config"]
        assert fit["configs_by_measured"] == int((0.8 * gib * 2**30 - shared) // r["measured_bytes_per_config"])
    # The whole batch of 128 keeps 4x the training activations of a micro-batch of 32: never less memory.
    assert whole["estimate_bytes_per_config"] >= row["estimate_bytes_per_config"]


def test_gpu_report_group_size_is_the_paper_grids():
    from experiments import gpu_report

    # delay_sweep's paper preset: 10 learning rates x 5 batch sizes x 6 delays, one group per batch size.
    assert gpu_report.grid_group_size("paper") == (300, 5, 60)
    assert gpu_report.grid_group_size("tiny") == (4, 1, 4)  # 2 learning rates x 2 delays, batch 128


def test_gpu_report_goals_are_judged_at_the_paper_size_only():
    from experiments import gpu_report

    s = {"preset": "paper", "data": "random:60000"}
    report = {"grid": {"status": "done", "wall_s": 100.0}, "throughput_at_paper_size": True,
              "summary": [{"batch_size": 64, "ratio_engine_to_torch": 40.0}]}
    goals = gpu_report._goals(report, s)
    assert goals["grid_wall_s"]["met"] is True and goals["torch_ratio_batch_64"]["met"] is False
    report["grid"]["wall_s"] = 121.0
    report["summary"][0]["ratio_engine_to_torch"] = 50.0
    goals = gpu_report._goals(report, s)
    assert goals["grid_wall_s"]["met"] is False and goals["torch_ratio_batch_64"]["met"] is True
    report["throughput_at_paper_size"] = False
    goals = gpu_report._goals(report, {"preset": "tiny", "data": "random:256"})
    assert goals["grid_wall_s"]["met"] is None and goals["torch_ratio_batch_64"]["met"] is None
    assert goals["grid_wall_s"]["value"] == 121.0


def test_gpu_report_refuses_a_cpu_in_one_line(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert main(["benchmark", "--gpu-report", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPU or TPU" in err and "--allow-cpu" in err
    assert not out.exists()  # refused before anything was written (or compiled)


def test_gpu_report_smoke_run_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu"
    argv = ["benchmark", "--gpu-report", "--allow-cpu", "--grid-preset", "tiny", "--grid-data", "random:256",
            "--batch-sizes", "64", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "gpu_report.json").read_text())
    assert r["backend"] == "cpu" and r["devices"] and r["group_configs"] == 4 and r["samples"] == 256
    assert r["steps"]["throughput"]["status"] == "done" and r["steps"]["grid"]["status"] == "done"
    engine = [x for x in r["throughput"] if x.get("engine")]
    assert [(x["batch_size"], x["configs"]) for x in engine] == [(64, 4)] and engine[0]["config_samples_per_s"] > 0
    torch_rows = [x for x in r["throughput"] if x.get("torch")]
    (summary,) = r["summary"]
    if r["torch"] is None:
        assert not torch_rows and summary["ratio_engine_to_torch"] is None
    else:
        assert summary["ratio_engine_to_torch"] == engine[0]["config_samples_per_s"] / torch_rows[0][
            "config_samples_per_s"]
    g = r["grid"]
    assert (g["configs"], g["groups"], g["configs_run"]) == (4, 1, 4)
    assert 0 < g["training_s"] <= g["wall_s"] <= r["elapsed_s"]
    assert r["goals"]["grid_wall_s"]["value"] == g["wall_s"]
    assert r["goals"]["grid_wall_s"]["met"] is None and r["goals"]["torch_ratio_batch_64"]["met"] is None  # tiny
    assert "gpu_report.json" in capsys.readouterr().out


def test_gpu_report_budget_guard_still_writes_the_report(tmp_path):
    out = tmp_path / "gpu"
    argv = ["benchmark", "--gpu-report", "--allow-cpu", "--grid-preset", "tiny", "--grid-data", "random:256",
            "--batch-sizes", "64", "--budget", "0.001", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "gpu_report.json").read_text())
    assert r["steps"]["throughput"]["status"] in ("stopped at the budget", "skipped: budget spent")
    assert r["steps"]["grid"]["status"] == "skipped: budget spent" and "wall_s" not in r["grid"]
    assert r["goals"]["grid_wall_s"]["value"] is None
def test_asgrad_comparison_entry(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--only", "asgrad", "--out", str(out)]) == 0
    row = json.loads((out / "benchmark.json").read_text())["asgrad"]
    for k in ("jax_run_iterations_per_s", "numpy_run_iterations_per_s", "ratio", "runs", "iterations",
              "workers", "samples_per_worker", "dim"):
        assert row[k] > 0, k
    assert (row["runs"], row["iterations"], row["workers"], row["samples_per_worker"], row["dim"]) == (4, 20, 3, 10, 4)
    assert abs(row["ratio"] - row["jax_run_iterations_per_s"] / row["numpy_run_iterations_per_s"]) < 1e-9 * row["ratio"]
    printed = capsys.readouterr().out
    assert "asgrad  jax " in printed and " numpy " in printed and " ratio " in printed
