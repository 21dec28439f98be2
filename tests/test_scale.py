"""Sweeps at scale: sharding over a device mesh, padding, resuming a killed sweep, memory planning.

Sharding tests run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the flag must be set before JAX starts), comparing sharded runs with unsharded ones of the same configs.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from asgd_jax import Trainer, sweep
from asgd_jax.data import make_dataset
from experiments import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from asgd_jax import sweep
    from asgd_jax.data import make_dataset

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 28, 28)).astype(np.uint8)
    y = (x[:, :14].mean((1, 2)) > x[:, 14:].mean((1, 2))).astype(np.int32)
    ds = make_dataset(x[:64], y[:64], x[64:], y[64:], name="toy", num_classes=2)
    grid = {"model": "mlp", "learning_rate": [0.05, 0.2], "delay": [0, 1, 3], "seed": [0, 1], "batch_size": 16,
            "epochs": 2}
    configs = [sweep.normalize_config(c) for c in sweep.expand_grid(grid)][:11]   # 11: pads on 2, 3, 4, 8
    (group,) = sweep.group_configs(configs)
    out = {"devices": jax.device_count()}
    runs = {
        "unsharded": dict(mesh=None, chunk_size=0),
        "unsharded_one_by_one": dict(mesh=None, chunk_size=1),
        "mesh8": dict(mesh=sweep.local_mesh(), chunk_size=None),   # auto: 1 per device on CPU -> 8 + 3 padded
        "mesh8_whole": dict(mesh=sweep.local_mesh(), chunk_size=0),  # 11 padded to 16
        "mesh3": dict(mesh=sweep.local_mesh(jax.devices()[:3]), chunk_size=0),  # 11 padded to 12
        "mesh2": dict(mesh=sweep.local_mesh(jax.devices()[:2]), chunk_size=4),
        "auto": dict(chunk_size=None),   # mesh="auto": all 8 local devices
    }
    for name, kw in runs.items():
        res = sweep.run_group(group, ds, loop="step", **kw)
        out[name] = [[r["config_id"], r["train_loss_per_epoch"], r["test_loss_per_epoch"]] for r in res]
    # a config alone (its own group: smaller max_delay, chunk of one) on one device of the mesh
    alone = sweep.group_configs([configs[4]])[0]
    res = sweep.run_group(alone, ds, mesh=sweep.local_mesh(jax.devices()[5:6]))
    out["alone"] = [[r["config_id"], r["train_loss_per_epoch"], r["test_loss_per_epoch"]] for r in res]
    out["mesh_for_group"] = [sweep.mesh_for_group(sweep.local_mesh(), n).devices.size for n in (1, 3, 8, 11)]
    # programs compiled after a sharded run's first epoch (each loop driver, a fresh trainer): none expected
    import dataclasses
    import jax.numpy as jnp
    from asgd_jax import Trainer, run_configs
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None)
    for loop in ("scan", "step"):
        trainer = Trainer(dataclasses.replace(group.train_config, epochs=3), ds)
        keys = jax.random.split(jax.random.key(0), 8)
        hp = {"learning_rate": jnp.full((8,), 0.05), "delay": jnp.arange(8) % 2}
        marks = []
        run_configs(trainer, keys, hp, loop=loop, mesh=sweep.local_mesh(), on_epoch=lambda e, m: marks.append(len(compiles)))
        out["compiles_after_epoch_1_" + loop] = marks[-1] - marks[0]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded_runs():
    env = dict(os.environ)  # with the test session's XLA_FLAGS (tests/conftest.py); the script adds its own
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Tolerance of "the same result": the sharded programs are compiled per device count, so XLA may
# fuse the float32 arithmetic differently; 2 epochs of SGD keep the differences near float32 epsilon.
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.parametrize("name", ["unsharded_one_by_one", "mesh8", "mesh8_whole", "mesh3", "mesh2", "auto"])
def test_sharded_equals_unsharded(sharded_runs, name):
    assert sharded_runs["devices"] == 8
    ref, got = sharded_runs["unsharded"], sharded_runs[name]
    assert [r[0] for r in got] == [r[0] for r in ref]  # every config once, padding dropped, order kept
    for (_, train_a, test_a), (_, train_b, test_b) in zip(ref, got):
        np.testing.assert_allclose(train_b, train_a, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(test_b, test_a, rtol=RTOL, atol=ATOL)


def test_a_group_smaller_than_the_mesh_uses_only_as_many_devices(sharded_runs):
    # padding a lone config to 8 devices would run 7 copies of it beside it
    assert sharded_runs["mesh_for_group"] == [1, 3, 8, 8]


def test_sharded_run_compiles_only_in_its_first_epoch(sharded_runs):
    # The fresh state's constant leaves (zero biases and buffers) and the counters an epoch resets come
    # back from XLA replicated, the rest sharded; run_configs puts them back along the config axis so the
    # second epoch reuses the first one's program instead of compiling it again (it did, before).
    assert sharded_runs["compiles_after_epoch_1_scan"] == 0
    assert sharded_runs["compiles_after_epoch_1_step"] == 0


def test_config_alone_equals_config_in_a_group(sharded_runs):
    ((cid, train, test),) = sharded_runs["alone"]
    ref = {r[0]: r for r in sharded_runs["unsharded"]}[cid]
    np.testing.assert_allclose(train, ref[1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(test, ref[2], rtol=RTOL, atol=ATOL)
    # the configs really differ from one another (the comparison is not trivially true)
    assert len({tuple(r[1]) for r in sharded_runs["unsharded"]}) == len(sharded_runs["unsharded"])


def test_plan_chunks_pads_to_the_devices():
    configs = [
        sweep.normalize_config({"learning_rate": 0.1 * (i + 1), "batch_size": 8, "epochs": 1})
        for i in range(7)
    ]
    (group,) = sweep.group_configs(configs)
    plan = sweep.plan_chunks(group, chunk_size=0, num_devices=4)
    assert [(len(c.configs), c.size) for c in plan] == [(7, 8)]
    plan = sweep.plan_chunks(group, chunk_size=3, num_devices=2)  # 3 rounds up to 4 per call
    assert [(len(c.configs), c.size) for c in plan] == [(4, 4), (3, 4)]
    plan = sweep.plan_chunks(group, chunk_size=0, num_devices=2, max_per_device=1)  # memory: 1 per device
    assert [(len(c.configs), c.size) for c in plan] == [(2, 2)] * 3 + [(1, 2)]
    assert [c for ch in plan for c in ch.configs] == list(group.configs)
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        sweep.plan_chunks(group, chunk_size=-1)


# -- memory ------------------------------------------------------------------------------------


def _toy_dataset():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (96, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 96).astype(np.int32)
    return make_dataset(x[:64], y[:64], x[64:], y[64:], name="toy")


def _trainer(max_delay, model="lenet5", batch_size=16):
    from asgd_jax import TrainConfig

    return Trainer(
        TrainConfig(model=model, batch_size=batch_size, epochs=1, max_delay=max_delay), _toy_dataset()
    )


def test_memory_estimate_grows_by_the_delay_buffer():
    # LeNet-5 has 61 706 float32 parameters (hand count: 156 + 2 416 + 48 120 + 10 164 + 850); the delay
    # buffer holds max_delay + 1 gradients, and the estimate counts the state once (it is donated), so going
    # from max_delay 0 (no buffer) to 10 (11 slots) adds 11 * 61 706 * 4 bytes.
    small, big = sweep.config_memory_bytes(_trainer(0)), sweep.config_memory_bytes(_trainer(10))
    assert big - small == 11 * 61_706 * 4
    assert small > 3 * 61_706 * 4 * 2  # at least parameters, momentum and gradients


def test_memory_splits_chunks_and_stops_before_compiling():
    t = _trainer(3)
    need = sweep.config_memory_bytes(t)
    data = sum(np.asarray(a).nbytes for a in t.data)
    budget = int((data + 5.5 * need) / 0.8)  # room for 5 configs
    assert sweep.max_configs_per_device(t, budget) == 5
    with pytest.raises(sweep.SweepMemoryError, match=r"needs about .* lower batch_size or the largest delay"):
        sweep.max_configs_per_device(t, int((data + 0.5 * need) / 0.8))
    configs = [
        sweep.normalize_config({"learning_rate": 0.01 * (i + 1), "batch_size": 16, "epochs": 1, "delay": 3})
        for i in range(7)
    ]
    (group,) = sweep.group_configs(configs)
    sizes = []
    res = sweep.run_group(
        group,
        _toy_dataset(),
        chunk_size=0,
        trainer=t,
        memory_budget=budget,
        mesh=None,
        on_chunk=lambda rs: sizes.append(len(rs)),
    )
    assert sizes == [5, 2] and len(res) == 7


# -- resuming a killed sweep --------------------------------------------------------------------

_SWEEP = [
    "delay_sweep",
    "--preset",
    "tiny",
    "--learning-rates",
    "0.001,0.003,0.01,0.03,10",
    "--delays",
    "0,2",
    "--epochs",
    "2",
]


def _cli(out, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "experiments", *_SWEEP, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kw,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert _cli(out).wait(timeout=600) == 0
    return (out / "results.jsonl").read_bytes()


def test_sigkilled_sweep_resumes_to_the_same_results(tmp_path, uninterrupted):
    n = len(uninterrupted.splitlines())
    assert n == 10
    path = tmp_path / "results.jsonl"
    proc = _cli(tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = path.read_bytes().count(b"\n")
    assert 3 <= done < n, f"the sweep was not killed mid-way ({done} of {n} lines)"
    # resume with the same command: only the rest runs, and the file ends byte-identical
    assert _cli(tmp_path).wait(timeout=600) == 0
    assert path.read_bytes() == uninterrupted
    timings = [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()]
    # every config has a wall time; one killed between its two writes may have two (the last counts)
    assert {t["config_id"] for t in timings} == {json.loads(line)["config_id"] for line in uninterrupted.splitlines()}
    assert all(t["seconds"] > 0 for t in timings)


def test_cut_off_last_line_is_kept_aside_and_rerun(tmp_path, uninterrupted):
    lines = uninterrupted.splitlines(keepends=True)
    (tmp_path / "results.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:57])  # killed mid-write
    assert _cli(tmp_path).wait(timeout=600) == 0
    assert (tmp_path / "results.jsonl").read_bytes() == uninterrupted
    assert (tmp_path / "results.jsonl.partial").read_bytes() == lines[4][:57] + b"\n"


def test_changed_grid_never_reuses_other_configs(tmp_path, uninterrupted):
    (tmp_path / "results.jsonl").write_bytes(uninterrupted)
    out = subprocess.run(
        [sys.executable, "-m", "experiments", *_SWEEP[:-2], "--epochs", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 20  # 10 two-epoch results kept, 10 one-epoch configs run anew
    assert sorted(r["epochs"] for r in records) == [1] * 10 + [2] * 10


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_sweep_and_merge_to_the_same_results(tmp_path, uninterrupted):
    """``--distributed`` with two local processes (jax.distributed over a gloo coordinator on this host).

    Each process runs its share of the chunks; process 0 merges, and results.jsonl
    equals the one-process run byte for byte.
    """
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "experiments", "--distributed", *_SWEEP, "--out", str(tmp_path)],
            cwd=ROOT,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert (tmp_path / "results.jsonl").read_bytes() == uninterrupted
    assert not list(tmp_path.glob("results.p*.jsonl"))  # merged and removed
    shares = []
    for i, log in enumerate(logs):
        head = next(line for line in log.splitlines() if line.startswith("delay_sweep:"))
        assert f"process {i} of 2" in head, head
        shares.append(int(head.split(" chunk(s) to run")[0].rsplit(" ", 1)[1]))
    assert all(n >= 1 for n in shares), shares  # both processes trained something


def test_results_file_appends_only_new_configs(tmp_path):
    f = common.ResultsFile(str(tmp_path / "results.jsonl"))
    f.append([{"config_id": "a", "x": 1.0, "seconds": 3.0}, {"config_id": "b", "x": float("nan")}])
    f.append([{"config_id": "a", "x": 2.0, "seconds": 4.0}])
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"config_id": "a", "x": 1.0},
        {"config_id": "b", "x": None},
    ]
    assert [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()] == [
        {"config_id": "a", "seconds": 3.0}
    ]
