"""The heterogeneous study: its configs reach the Trainer's rules and per-worker data; tiny end to end.

References: AsGrad's laws for the shares of the updates (pure ASGD: worker i's share is proportional to
1 / s_i with s_i its mean compute time; shuffle: equal shares), Rennala's and Ringmaster's definitions.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from experiments import heterogeneous
from experiments.__main__ import main


def test_configs_name_the_rules_split_and_speeds():
    s = dict(heterogeneous.PRESETS["quick"], learning_rates=[0.1], workers=5)
    configs = heterogeneous.make_configs(SimpleNamespace(settings=s, data=SimpleNamespace(num_train=1437)))
    by = {c["method"]: c for c in configs}
    assert list(by) == list(heterogeneous.METHODS)
    assert {c["worker_times"] for c in configs} == {(1.0, 2.0, 3.0, 4.0, 5.0)}
    assert {c["data_split"] for c in configs} == {"label"} and {c["max_workers"] for c in configs} == {5}
    assert [by[m]["assignment"] for m in ("pure", "random", "shuffle")] == ["pure", "random", "shuffle"]
    assert by["rennala"]["rules"] == ("drop", "accumulate") and by["rennala"]["max_staleness"] == 0
    assert by["rennala"]["accumulate"] == s["rennala_batch"] and by["rennala"]["assignment"] == "pure"
    assert by["ringmaster"]["rules"] == ("drop",) and by["ringmaster"]["max_staleness"] == s["ringmaster_r"]


def test_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "het"
    assert main(["heterogeneous", "--preset", "tiny", "--out", str(out)]) == 0
    records = {r["assignment"] if "rules" not in r else r["rules"][-1]: r
               for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(records) == {"pure", "random", "shuffle", "accumulate", "drop"}
    n = 4
    for r in records.values():
        assert len(r["worker_gradients"]) == n and len(r["per_class_accuracy"]) == 10
    pure = records["pure"]
    used = np.array(pure["worker_gradients"], float)
    # Pure ASGD uses every arrival (one per call after the n - 1 start-up calls), shares ~ 1/s_i.
    assert used.sum() == pure["server_steps_per_epoch"][-1]
    predicted = (1 / np.arange(1, n + 1)) / (1 / np.arange(1, n + 1)).sum()
    np.testing.assert_allclose(used / used.sum(), predicted, rtol=0.2)
    shuffle = np.array(records["shuffle"]["worker_gradients"], float)
    np.testing.assert_allclose(shuffle / shuffle.sum(), 1 / n, atol=0.05)
    # Rennala: every step averages S = 2 gradients of the current version; the rest were dropped.
    ren = records["accumulate"]
    steps = ren["server_steps_per_epoch"][-1]
    assert 2 * steps <= sum(ren["worker_gradients"]) <= 2 * steps + 1   # + one waiting for its partner
    # Ringmaster (R = 4): the slowest worker's gradients are always more than 4 steps late.
    assert records["drop"]["worker_gradients"][-1] == 0 and min(records["drop"]["worker_gradients"][:2]) > 0
    for name in ("accuracy.png", "per_class.png", "shares.png", "report.md"):
        assert (out / name).exists()


def test_bad_input_is_one_line(capsys):
    assert main(["heterogeneous", "--preset", "tiny", "--methods", "pure,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err
