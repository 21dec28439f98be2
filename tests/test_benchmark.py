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
    assert row["ratio_engine_to_torch"] is None  # no --torch
    assert info["asgrad"]["ratio"] > 0  # the asgrad comparison runs with --only throughput too
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
