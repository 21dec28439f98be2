"""The time_to_accuracy study: configs and systems per method and regime, presets, report verdicts on hand-made
rows, one-line errors, and the tiny preset end to end."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import asgd_jax
from asgd_jax.mindflayer import MindFlayerState
from experiments import study, time_to_accuracy as tta
from experiments.__main__ import main


def _settings(preset="quick", **kw):
    return tta.normalize_settings({**tta.PRESETS[preset], **kw})


def _case(regime, s, m=3, seed=0):
    return {**tta.regime_case(regime, s, 0), "data": np.int32(0), "seed": np.int32(seed), "m_star": np.int32(m)}


# --- configs and systems ------------------------------------------------------------------------------------


def test_regimes_have_the_right_times_speeds_and_failure():
    s = _settings()
    assert tta.mean_times("linear100") == [float(i) for i in range(1, 101)]
    np.testing.assert_allclose(tta.mean_times("sqrt10"), np.sqrt(np.arange(1, 11)))
    assert tta.mean_times("equal") == [1.0] * 10 and tta.workers_of("sqrt100") == 100
    heavy, eq = tta.regime_case("heavy", s, 0), tta.regime_case("equal", s, 0)
    assert float(heavy["sigma"]) == pytest.approx(s["heavy_sigma"]) and float(eq["sigma"]) == pytest.approx(s["jitter"])
    vary = tta.regime_case("varying", s, 0)
    np.testing.assert_allclose(vary["speeds"][:2], [[1.0, s["slow_speed"]], [s["slow_speed"], 1.0]])
    assert (eq["speeds"] == 1).all() and float(eq["fail_at"]) >= 1e29
    assert float(tta.regime_case("failing", s, 0)["fail_at"]) == s["fail_at"] == 2.0
    # MindFlayer's attempts: every worker busy for about the slowest one's time
    assert tta.regime_case("linear10", s, 0)["attempts"].tolist() == [10, 5, 3, 2, 2, 2, 1, 1, 1, 1]


def test_the_regime_timing_model_samples_the_regime():
    s = _settings()
    lin = tta.regime_timing(_case("linear10", {**s, "jitter": 0.0}))
    t = lin.sample_at(jax.random.key(0), jnp.arange(10), 10, 0.0)
    np.testing.assert_allclose(np.asarray(t), np.arange(1, 11), rtol=1e-6)
    fail = tta.regime_timing(_case("failing", {**s, "jitter": 0.0, "fail_at": 0.5}))
    t = np.asarray(fail.sample_at(jax.random.key(0), jnp.arange(10), 10, 0.0))
    assert np.isinf(t[0]) and np.allclose(t[1:], 1.0)             # worker 1 (id 0) never finishes
    vary = tta.regime_timing(_case("varying", {**s, "jitter": 0.0, "period": 8.0, "slow_speed": 0.5}))
    t = np.asarray(vary.sample_at(jax.random.key(0), jnp.arange(2), 10, 0.0))
    assert t.tolist() == [1.0, 2.0]                                # even workers fast first, odd ones slow


@pytest.mark.parametrize("method, check", [
    ("pure", lambda st: st.events.assignment if hasattr(st.events, "assignment") else True),
    ("ssgd", lambda st: isinstance(st, asgd_jax.SyncState)),
    ("rennala", lambda st: int(st.server_state.every) == 10 and int(st.server_state.max_staleness) == 0),
    ("ringmaster", lambda st: int(st.server_state.max_staleness) == 10),
    ("malenia", lambda st: type(st.server_state).__name__ == "MaleniaState"),
    ("ringleader", lambda st: type(st.server_state).__name__ == "RingleaderState"),
    ("rescaled", lambda st: np.allclose(st.server_state[0].times, np.arange(1, 11))),
    ("mindflayer", lambda st: isinstance(st, MindFlayerState) and st.attempts.tolist()[:2] == [10, 5]
     and np.allclose(st.budgets, 2.0 * np.arange(1, 11))),
    ("naive_optimal", lambda st: int(asgd_jax.active_workers(st)) == 3),
    ("adaptive", lambda st: "StalenessState" in repr(type(st.server_state)) or True),
])
def test_each_method_builds_its_system(method, check):
    s = _settings()
    tx = tta.make_system(method, 0.1, 10, _case("linear10", s), s["budget"])
    st = tx.init(jnp.zeros(3))
    assert check(st)


def test_ringmaster_stop_and_adaptive_differ_from_ringmaster_and_pure():
    """Run the same 200 calls: stops never deliver a gradient older than R; adaptive scales (other trajectory)."""
    s = {**_settings(), "jitter": 0.0}
    case = _case("linear10", s)
    g = lambda w, i: w - (i + 1.0)

    def final(method):
        tx = tta.make_system(method, 0.05, 10, case, 2.0)
        w, st = jnp.zeros(2), tx.init(jnp.zeros(2))
        worst = 0
        for _ in range(200):
            u, st = tx.update(g(w, asgd_jax.next_worker(st)), st, w)
            w = w + u
            worst = max(worst, int(st.last_staleness))
        return np.asarray(w), worst, int(st.discarded)

    _, worst_stop, dropped_stop = final("ringmaster_stop")
    _, _, dropped = final("ringmaster")
    assert worst_stop <= 10 and dropped_stop == 0 and dropped > 0
    assert not np.allclose(final("pure")[0], final("adaptive")[0])


def test_configs_name_method_regime_and_system():
    s = _settings()
    cs = tta.lr_configs(s)
    assert len(cs) == 13 * 8 * 2 * len(s["step_sizes"]) * 2
    c = next(c for c in cs if c["method"] == "malenia" and c["regime"] == "linear100")
    assert c["system"] == tta.METHOD_MAP["malenia"] and c["workers"] == 100 and c["calls"] == 100 * s["calls_per_worker"]
    ids = {study.Study.config_id(tta.STUDY, c) for c in cs}
    assert len(ids) == len(cs)       # method and regime are labels, but every config differs in its fields
    ctx = study.Context(tta.STUDY, "quick", s, set(), dict(study.RUN_DEFAULTS))
    lenet = tta.lenet_configs(ctx)
    assert {c["method"] for c in lenet} == set(s["lenet_methods"]) and {c["regime"] for c in lenet} == {"linear10", "heavy"}
    mal = next(c for c in lenet if c["method"] == "malenia")
    assert mal["rules"] == ["malenia"] or tuple(mal["rules"]) == ("malenia",)
    assert mal["data_split"] == "label" and mal["malenia_batch"] == 10.0
    heavy = next(c for c in lenet if c["regime"] == "heavy")
    assert heavy["time_spread"] == s["heavy_sigma"] and "worker_times" not in heavy


@pytest.mark.parametrize("preset", list(tta.PRESETS))
def test_presets_validate(preset):
    s = tta.normalize_settings(tta.PRESETS[preset])
    ctx = study.Context(tta.STUDY, preset, s, set(), dict(study.RUN_DEFAULTS))
    assert tta._configs(ctx)
    assert all(m in tta.LENET_METHODS for m in s["lenet_methods"])


# --- analysis on hand-made records ------------------------------------------------------------------------


def _rows(times: dict, end=0.1) -> dict:
    return {k: {"time": v, "end": end, "step_size": 0.5, "runs": [], "m_star": 3, "server_steps": 1.0,
                "end_time": 1.0} for k, v in times.items()}


def _settings_for(methods, regimes, splits=("iid", "contiguous")):
    return {**_settings(), "methods": list(methods), "regimes": list(regimes), "splits": list(splits)}


def test_claims_verdicts_follow_the_numbers():
    s = _settings_for(["pure", "rennala", "ringmaster", "malenia", "ringleader", "mindflayer", "ssgd", "shuffle",
                       "rescaled"], ["linear100", "heavy", "failing"])
    good = _rows({
        ("pure", "linear100", "iid"): 50.0, ("rennala", "linear100", "iid"): 20.0, ("ringmaster", "linear100", "iid"): 30.0,
        ("rennala", "linear100", "contiguous"): None, ("malenia", "linear100", "contiguous"): 40.0,
        ("ringleader", "linear100", "contiguous"): None, ("rennala", "failing", "contiguous"): 9.0,
        ("malenia", "failing", "contiguous"): None, ("ringleader", "failing", "contiguous"): 8.0,
        ("mindflayer", "heavy", "iid"): 5.0, ("rennala", "heavy", "iid"): 7.0, ("ssgd", "heavy", "iid"): 9.0,
        ("mindflayer", "heavy", "contiguous"): 6.0, ("rennala", "heavy", "contiguous"): None,
        ("ssgd", "failing", "iid"): None, ("pure", "failing", "iid"): 3.0, ("ssgd", "failing", "contiguous"): None,
        ("pure", "failing", "contiguous"): None, ("ringmaster", "failing", "contiguous"): 4.0,
        ("shuffle", "linear100", "contiguous"): 30.0, ("pure", "linear100", "contiguous"): None,
        ("rescaled", "linear100", "contiguous"): 25.0,
    })
    text = "\n".join(tta.claims(s, good))
    for claim in ("Rennala / Ringmaster beat plain ASGD", "Malenia and Ringleader handle", "MindFlayer beats",
                  "shuffle reaches what pure", "Rescaled ASGD removes", "A dead worker stalls"):
        line = next(x for x in text.splitlines() if claim in x)
        assert "**Holds.**" in line, line
    bad = dict(good)
    bad.update(_rows({("pure", "linear100", "iid"): 10.0, ("mindflayer", "heavy", "iid"): 8.0,
                      ("ssgd", "failing", "iid"): 2.0}))
    text = "\n".join(tta.claims(s, bad))
    for claim in ("Rennala / Ringmaster beat plain ASGD", "MindFlayer beats", "A dead worker stalls"):
        line = next(x for x in text.splitlines() if claim in x)
        assert "**Does not hold.**" in line, line


def test_best_step_and_winners_from_records():
    s = {**_settings_for(["pure", "rennala"], ["equal"], ["iid"]), "step_sizes": [0.5, 0.25], "seeds": [0, 1]}

    def rec(m, g, seed, t):
        return {"part": "logreg", "method": m, "regime": "equal", "split": "iid", "step_size": g, "seed": seed,
                "time_to_target": t, "end_grad_norm": 0.01, "server_steps": 5, "time": [0.0, 1.0],
                "grad_norm": [1.0, 0.01], "m_star": 2}

    records = [rec("pure", 0.5, 0, 3.0), rec("pure", 0.5, 1, None), rec("pure", 0.25, 0, 6.0), rec("pure", 0.25, 1, 8.0),
               rec("rennala", 0.5, 0, 4.0), rec("rennala", 0.5, 1, 5.0), rec("rennala", 0.25, 0, None),
               rec("rennala", 0.25, 1, None)]
    rows = tta.best_rows(s, records)
    assert rows[("pure", "equal", "iid")]["step_size"] == 0.25 and rows[("pure", "equal", "iid")]["time"] == 7.0
    assert rows[("rennala", "equal", "iid")]["time"] == 4.5
    assert tta.winners(s, rows)[("equal", "iid")] == ["rennala", "pure"]
    assert tta.time_to_target([1.0, 0.5, 0.2, 0.1], np.array([0.0, 1.0, 2.0, 3.0]), 0.3) == 2.0
    assert tta.time_to_target([1.0, None, 0.5], np.array([0.0, 1.0, 2.0]), 0.3) is None


# --- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, match", [
    (["--methods", "pure,hogwild"], "--methods (each value): unknown 'hogwild'"),
    (["--regimes", "lightning"], "--regimes (each value): unknown 'lightning'"),
    (["--target", "-0.1"], "--target must be > 0"),
    (["--target", "1.5"], "--target must be < 1"),
    (["--calls-per-worker", "1"], "--calls-per-worker must be >= 2"),
    (["--calls-per-worker", "40", "--evals", "7"], "--evals must divide the calls of a run"),
    (["--lr-data", "libsvm:/x"], "--lr-data 'libsvm:/x': write synthetic:<alpha>,<beta>"),
    (["--lenet-methods", "naive_optimal"], "--lenet-methods (each value): unknown 'naive_optimal'"),
    (["--target-accuracy", "0"], "--target-accuracy must be > 0"),
    (["--slow-speed", "2"], "--slow-speed must be <= 1"),
    (["--batch-size", "500"], "use a batch size of at most 140"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, match):
    assert main(["time_to_accuracy", "--preset", "tiny", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_tiny_preset_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    t0 = time.perf_counter()
    assert main(["time_to_accuracy", "--preset", "tiny", "--out", str(out)]) == 0
    wall = time.perf_counter() - t0
    assert wall < 90, wall
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    lr = [r for r in recs if r.get("part", "logreg") == "logreg" and "grad_norm" in r]
    assert len(lr) == 4 * 2 * 2 * 2 and all(len(r["grad_norm"]) == 11 for r in lr)
    assert any(r["reached"] for r in lr)
    for f in ("report.md", "time_to_target.png", "grad_norm_vs_time.png", "lenet_time_to_accuracy.png",
              "lenet_accuracy_vs_time.png", "study.json"):
        assert (out / f).is_file(), f
    text = (out / "report.md").read_text()
    assert "Fastest method per regime" in text and "LeNet-5 on label-split data" in text
    # rerun: every config already there, nothing trained again
    assert main(["time_to_accuracy", "--preset", "tiny", "--out", str(out)]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == len(recs)


def test_lenet_time_to_accuracy_from_records():
    s = {**_settings(), "lenet_methods": ["pure", "malenia"], "lenet_regimes": ["linear10"],
         "learning_rates": [0.03, 0.1], "target_accuracy": 0.6}

    def rec(m, lr, accs, times):
        return {"part": "lenet", "method": m, "regime": "linear10", "learning_rate": lr, "test_accuracy": accs[-1],
                "test_accuracy_per_epoch": accs, "sim_time_per_epoch": times}

    records = [rec("pure", 0.03, [0.3, 0.5, 0.7], [10.0, 20.0, 30.0]), rec("pure", 0.1, [0.5, 0.65, 0.8], [10.0, 20.0, 30.0]),
               rec("malenia", 0.03, [0.2, 0.3, 0.4], [50.0, 100.0, 150.0]), rec("malenia", 0.1, [0.1, 0.5, 0.55], [50.0, 100.0, 150.0])]
    out = tta.lenet_summary(s, records)
    assert out[("pure", "linear10")]["time"] == 20.0 and out[("pure", "linear10")]["lr"] == 0.1
    assert out[("malenia", "linear10")]["time"] is None and out[("malenia", "linear10")]["lr"] == 0.1   # best final
    assert tta.accuracy_time(records[0], 0.6) == 30.0 and tta.accuracy_time(records[2], 0.6) is None
    text = "\n".join(tta.lenet_report(s, out))
    assert "| ASGD pure | 20 (lr 0.1, final 0.800) |" in text and "| Malenia | ✗ [0.550] |" in text
