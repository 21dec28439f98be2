"""The README's Python examples run as written, and its two commands are the ones CI runs."""

import contextlib
import io
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _run(code):
    out = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace, out.getvalue()


def test_delayed_example_converges_without_delay_and_diverges_with_it():
    code = next(b for b in BLOCKS if "asgd_jax.delayed(" in b)
    assert len([l for l in code.strip().splitlines() if l.strip()]) <= 12
    _, printed = _run(code)
    lines = printed.strip().splitlines()
    assert lines[0].startswith("0 ") and lines[1].startswith("4 ")
    w0 = np.array(lines[0][2:].strip("[] ").split(), float)
    w4 = np.array(lines[1][2:].strip("[] ").split(), float)
    np.testing.assert_allclose(w0, [3.0, 3.0], atol=1e-3)  # the minimum of sum((w - 3)^2)
    assert np.all(np.abs(w4) > 1e6)  # delay 4 sends the same optimizer off


def test_make_train_example_runs():
    code = next(b for b in BLOCKS if "make_train(" in b)
    ns, printed = _run(code)
    acc = np.asarray(ns["metrics"]["test_accuracy"])
    assert acc.shape == (3, 5)
    assert acc[0, -1] > 0.8  # lr 0.01, no delay, learns digits
    assert printed.strip()


def test_asynchronous_example_pure_vs_shuffle():
    code = next(b for b in BLOCKS if "asgd_jax.asynchronous(" in b)
    _, printed = _run(code)
    rows = {}
    for line in printed.strip().splitlines():
        m = re.match(r"(\w+)\s+test accuracy ([\d.]+), simulated time ([\d.]+)", line)
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    assert set(rows) == {"pure", "shuffle"}
    assert rows["pure"][0] > 0.8 and rows["shuffle"][0] > 0.9  # both learn the digits
    # Shuffle waits for the slow workers: the same number of gradients takes longer on the simulated clock.
    assert rows["shuffle"][1] > 1.5 * rows["pure"][1]


def test_parts_example_drops_only_late_arrivals():
    code = next(b for b in BLOCKS if "asgd_jax.parameter_server(" in b)
    _, printed = _run(code)
    arrivals, version, discarded, time = printed.split()
    # 200 gradients, 3 start-up calls; every arrival is either a step or dropped; worker 3 (time 20) sets the clock.
    assert int(arrivals) == 197 and int(version) + int(discarded) == 197 and int(discarded) > 0
    assert float(time) >= 20 * 40
    assert "It prints `" + printed.strip() + "`" in README


def test_readme_commands_match_ci():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    test_cmd = 'pip install -e ".[test]" && python -m pytest'
    assert test_cmd in README and test_cmd in ci
    assert "pip install . && python -m experiments delay_sweep --preset quick" in README


def test_decentralized_example_matches_hand_derived_numbers():
    code = next(b for b in BLOCKS if "asgd_jax.ad_psgd(" in b)
    _, printed = _run(code)
    rows = dict(line.split(": ", 1) for line in printed.strip().splitlines())
    x_ad, t_ad, bytes_ad = (float(v) for v in re.findall(r"[-\d.]+", rows["AD-PSGD"])[:3])
    x_ar, t_ar, bytes_ar = (float(v) for v in re.findall(r"[-\d.]+", rows["AllReduce"])[:3])
    # AllReduce: SGD on the mean gradient converges to the mean target 3.5; 100 rounds of
    # (slowest 16 + ring all-reduce 2 * 7 * (0.01 + 0.01 + (4 / 8) / 4000)); 2 * 7 model-sized messages of 4 bytes a round
    assert abs(x_ar - 3.5) < 0.05
    assert abs(t_ar - 100 * (16 + 14 * 0.020125)) < 1
    assert bytes_ar == 100 * 14 * 4
    # AD-PSGD: 793 exchanges (800 calls, 7 start-up fills) of 2 messages of 4 bytes; no round waits for the slow worker
    assert bytes_ad == 793 * 2 * 4
    assert t_ad < t_ar / 10
    assert 2.5 < x_ad < 3.4   # pulled towards the 7 fast workers' mean 3.0
