"""The study skeleton (experiments/study.py): option tables, checks, resume, labels, study.json."""

from __future__ import annotations

import argparse
import json

import pytest

from experiments import study
from experiments.common import UsageError
from experiments.__main__ import main

OPTIONS = (
    study.Option("rates", float, many=True, above=0, help="comma-separated"),
    study.Option("count", int, low=1, high=5),
    study.Option("law", str, choices=("fixed", "normal")),
    study.Option("spread", float, low=0, applies=study.only_for("law", ("normal",))),
    study.Option("extra", bool, store=False, flag="--no-extra"),
)
PRESETS = {"small": {"rates": [0.1, 0.2], "count": 2, "law": "normal", "spread": 0.5, "extra": True}}


def toy_study(calls: list, fail_in_finish: bool = False) -> study.Study:
    """A study whose 'training' is arithmetic: one unit per rate, one config per (rate, k < count)."""

    def configs(ctx):
        s = ctx.settings
        return [{"rate": r, "k": k, "method": f"m{k % 2}"} for r in s["rates"] for k in range(s["count"])]

    def plan(ctx, cs):
        def unit(r):
            mine = [c for c in cs if c["rate"] == r]

            def run(_bar):
                calls.append(r)
                return [{"config_id": ctx.study.config_id(c), "rate": r, "k": c["k"], "value": r * c["k"]}
                        for c in mine]

            return study.Unit(mine, run)

        return [unit(r) for r in dict.fromkeys(c["rate"] for c in cs)]

    def finish(ctx, records):
        if fail_in_finish:
            raise RuntimeError("boom")
        return "report\n", []

    return study.Study(name="toy", help="", doc="", presets=PRESETS, options=OPTIONS, configs=configs, plan=plan,
                       finish=finish, default_preset="small")


def parse(argv, calls=None):
    s = toy_study(calls if calls is not None else [])
    p = argparse.ArgumentParser()
    s.add_arguments(p)
    return s, p.parse_args(argv)


def test_option_table_parsing_overrides_the_preset():
    s, args = parse(["--rates", "0.5, 1e-3", "--count", "3", "--law", "normal", "--no-extra"])
    settings, given, run_opts = s.settings_from_args(args)
    assert settings == {"rates": [0.5, 0.001], "count": 3, "law": "normal", "spread": 0.5, "extra": False}
    assert given == {"rates", "count", "law", "extra"}
    s, args = parse([])
    assert s.settings_from_args(args)[0] == PRESETS["small"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--rates", "0.1,0.2,0.1"], "--rates: '0.1' is given twice"),
        (["--rates", "0.1,,0.2"], "--rates '0.1,,0.2' has an empty item"),
        (["--rates", ","], "--rates needs at least one value"),
        (["--rates", "0.1,inf"], "'inf' is not a finite number"),
        (["--rates", "0.1,-2"], "--rates (each value) must be > 0, got -2"),
        (["--count", "2.5"], "--count: '2.5' is not an integer"),
        (["--count", "9"], "--count must be <= 5, got 9"),
        (["--law", "gamma"], "--law: unknown 'gamma'; choose from fixed, normal"),
        (["--law", "fixed", "--spread", "1"], "--spread applies only to --law normal (got fixed)"),
    ],
)
def test_bad_values_are_one_line_usage_errors(argv, match):
    s, args = parse(argv)
    with pytest.raises(UsageError) as e:
        s.settings_from_args(args)
    assert match in str(e.value) and "\n" not in str(e.value)


def run_toy(tmp_path, argv, calls, **kw):
    s, args = parse(argv, calls)
    if kw:
        s = toy_study(calls, **kw)
    args.out = str(tmp_path / "out")
    args.preset = "small"
    return study.run(s, args)


def test_resume_skips_finished_configs_and_never_rewrites_lines(tmp_path):
    calls = []
    assert run_toy(tmp_path, [], calls) == 0
    path = tmp_path / "out" / "results.jsonl"
    lines = path.read_text().splitlines()
    assert calls == [0.1, 0.2] and [json.loads(x)["value"] for x in lines] == [0.0, 0.1, 0.0, 0.2]
    assert run_toy(tmp_path, [], calls) == 0  # the same command: nothing runs
    assert calls == [0.1, 0.2] and path.read_text().splitlines() == lines
    assert run_toy(tmp_path, ["--rates", "0.1,0.3"], calls) == 0  # one new unit
    assert calls == [0.1, 0.2, 0.3]
    new = path.read_text().splitlines()
    assert new[:4] == lines and [json.loads(x)["value"] for x in new[4:]] == [0.0, 0.3]
    info = json.loads((tmp_path / "out" / "study.json").read_text())
    assert info["settings"]["rates"] == [0.1, 0.3] and info["num_configs"] == 4


def test_config_id_leaves_out_the_label():
    s = toy_study([])
    from asgd_jax.sweep import config_id

    assert s.config_id({"rate": 1.0, "method": "a"}) == s.config_id({"rate": 1.0, "method": "b"})
    assert s.config_id({"rate": 1.0, "method": "a"}) == config_id({"rate": 1.0})


def test_a_crash_does_not_overwrite_study_json(tmp_path):
    assert run_toy(tmp_path, [], []) == 0
    before = (tmp_path / "out" / "study.json").read_text()
    with pytest.raises(RuntimeError):
        run_toy(tmp_path, ["--rates", "0.7"], [], fail_in_finish=True)
    assert (tmp_path / "out" / "study.json").read_text() == before


def test_every_study_builds_its_options():
    from experiments.__main__ import STUDIES, build_parser

    build_parser()  # every option table turns into argparse options without clashes
    import importlib

    for name, module in STUDIES.items():
        st = getattr(importlib.import_module(module), "STUDY", None)
        assert (st is None) == (name == "benchmark")
        if st is not None:
            assert st.default_preset in st.presets
            keys = [o.key for o in st.options]
            assert len(keys) == len(set(keys)), name


def test_downpour_two_workers_keeps_the_warm_and_the_gradual_rows(tmp_path):
    """With n = 2, warm start and gradual introduction are the same schedule (one config, one record),
    but each method keeps its row in the analysis."""
    from experiments import async_results

    out = tmp_path / "dp"
    argv = ["downpour", "--preset", "tiny", "--workers", "2", "--optimizers", "sgd", "--intros", "warm,gradual",
            "--no-ssgd", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1  # the two configs are one
    labelled = [{**records[0], "method": m} for m in ("sgd+warm", "sgd+gradual")]
    best = async_results.best_settings(labelled, lambda r: "all", lambda r: (r["learning_rate"],))
    assert set(best) == {("all", "sgd+warm"), ("all", "sgd+gradual")}
    assert best[("all", "sgd+warm")]["final"] == best[("all", "sgd+gradual")]["final"] == records[0]["test_accuracy"]
    report = (out / "report.md").read_text()
    assert "| n = 2 | sgd+warm |" in report and "| n = 2 | sgd+gradual |" in report
