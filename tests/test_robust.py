"""Issue 14 (robust), the command-line side: every bad input answered in one line (exit status 2) before any work,
nothing in ``--out`` overwritten or mixed, no silent wrong result."""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import struct
import time

import numpy as np
import pytest

from experiments import study as skeleton
from experiments.__main__ import STUDIES, main
from experiments.common import UsageError, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(capsys, argv, code=2):
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    assert "Traceback" not in err
    return err


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes (directories as None)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), folder)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


# --- options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, match",
    [
        (["warmup", "--warmup-epochs", "nan"], "not a finite number"),
        (["warmup", "--warmup-epochs", "inf"], "not a finite number"),
        (["downpour", "--intros", "warm", "--warm-epochs", "inf"], "not a finite number"),
        (["delay_sweep", "--momentum", "nan"], "not a finite number"),
        (["delay_sweep", "--momentum", "-1"], "--momentum must be >= 0"),
        (["delay_sweep", "--momentum", "2"], "--momentum must be < 1"),
        (["dc_asgd", "--momentum", "1"], "--momentum must be < 1"),
        (["downpour", "--momentum", "2"], "--momentum must be < 1"),
        (["heterogeneous", "--momentum", "-0.5"], "--momentum must be >= 0"),
        (["dc_asgd", "--timing", "fixed", "--time-spread", "0.3"], "--time-spread does not apply"),
        (["downpour", "--timing", "exponential", "--time-spread", "0.3"], "--time-spread does not apply"),
        (["heterogeneous", "--timing", "fixed", "--time-spread", "0.3"], "--time-spread does not apply"),
        (["delay_sweep", "--data-dir", "/tmp"], "--data-dir applies only to --data tfds"),
        (["warmup", "--data", "digits", "--data-dir", "/tmp"], "--data-dir applies only to --data tfds"),
        (["delay_sweep", "--learning-rates", "0.1,,0.2"], "empty item"),
        (["delay_sweep", "--delays", "1,1"], "given twice"),
    ],
)
def test_bad_options_one_line_before_any_work(capsys, tmp_path, argv, match):
    out = tmp_path / "out"
    err = one_line_error(capsys, [*argv[:1], "--preset", "tiny", "--out", out, *argv[1:]])
    assert match in err, err
    assert not out.exists()  # refused before the folder was even made


def test_every_list_option_of_every_study_refuses_empty_items_and_duplicates():
    for module_name in STUDIES.values():
        st = getattr(importlib.import_module(module_name), "STUDY", None)
        if st is None:
            continue
        for o in st.options:
            if not o.many:
                continue
            good = list(o.choices)[:2] if o.choices else (["2", "3"] if o.kind is int else ["0.5", "0.25"])
            with pytest.raises(UsageError, match="empty item"):
                o.parse(f"{good[0]},,{good[-1]}")
            if o.unique:
                with pytest.raises(UsageError, match="given twice"):
                    o.parse(f"{good[0]},{good[0]}")


def test_every_momentum_option_is_in_zero_one():
    for module_name in STUDIES.values():
        st = getattr(importlib.import_module(module_name), "STUDY", None)
        for o in st.options if st else ():
            if o.key == "momentum":
                for bad in ("nan", "-1", "1", "2"):
                    with pytest.raises(UsageError):
                        o.parse(bad)
                assert o.parse("0.9") == 0.9


def test_report_names_a_spread_only_for_laws_with_one():
    assert "spread" not in skeleton.timing_text({"timing": "fixed", "time_spread": 0.2})
    assert "spread" not in skeleton.timing_text({"timing": "exponential", "time_spread": 0.2})
    assert "spread 0.2" in skeleton.timing_text({"timing": "normal", "time_spread": 0.2})


# --- runs that cannot train, memory -------------------------------------------------------------------------


def test_delay_longer_than_the_run_is_refused_naming_the_numbers(capsys, tmp_path):
    err = one_line_error(capsys, ["delay_sweep", "--preset", "tiny", "--delays", "0,500", "--out", tmp_path / "o"])
    # digits: 1437 // 128 = 11 gradients in the tiny preset's one epoch
    assert "delay=500 applies no gradient in a run of 11 gradients (1 epoch(s) of 11)" in err, err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_more_workers_than_gradients_is_refused_naming_the_numbers(capsys, tmp_path):
    err = one_line_error(capsys, ["dc_asgd", "--preset", "tiny", "--workers", "2,4000", "--out", tmp_path / "o"])
    assert "workers=4000 take no server step in a run of 22 gradients (1 epoch(s) of 22)" in err, err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_benchmark_with_too_many_workers_is_refused_before_allocating(capsys, tmp_path):
    err = one_line_error(capsys, ["benchmark", "--only", "overhead", "--workers", "10000000", "--out", tmp_path / "b"])
    assert "--workers 10000000" in err and "use at most --workers" in err, err


def test_ctrl_c_prints_one_line(capsys, tmp_path, monkeypatch):
    def interrupted(study, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(skeleton, "run", interrupted)
    err = one_line_error(capsys, ["delay_sweep", "--preset", "tiny", "--out", tmp_path / "o"], code=130)
    assert "interrupted" in err


# --- IDX data -------------------------------------------------------------------------------------------------


def write_idx(folder, n_train=300, n_test=50, images_magic=None, rows=28):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def images(name, n):
        head = images_magic if images_magic is not None else struct.pack(">HBB", 0, 0x08, 3)
        (folder / name).write_bytes(head + struct.pack(">III", n, rows, rows)
                                    + rng.integers(0, 256, n * rows * rows, dtype=np.uint8).tobytes())

    def labels(name, n):
        (folder / name).write_bytes(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", n)
                                    + rng.integers(0, 10, n, dtype=np.uint8).tobytes())

    images("train-images-idx3-ubyte", n_train)
    labels("train-labels-idx1-ubyte", n_train)
    images("t10k-images-idx3-ubyte", n_test)
    labels("t10k-labels-idx1-ubyte", n_test)
    return folder


def test_idx_test_set_of_zero_images_is_refused_naming_the_file(capsys, tmp_path):
    data = write_idx(tmp_path / "idx", n_test=0)
    err = one_line_error(capsys, ["delay_sweep", "--preset", "tiny", "--data", f"idx:{data}", "--out", tmp_path / "o"])
    assert "t10k-images-idx3-ubyte" in err and "0 images" in err, err


def test_idx_wrong_magic_says_which_file_is_not_idx(capsys, tmp_path):
    data = write_idx(tmp_path / "idx", images_magic=struct.pack(">HBB", 0, 0x08, 1))  # a labels magic
    err = one_line_error(capsys, ["delay_sweep", "--preset", "tiny", "--data", f"idx:{data}", "--out", tmp_path / "o"])
    assert "train-images-idx3-ubyte: not an IDX images file: magic number 0x00000801" in err, err
    assert "shape" not in err


# --- the output folder and its results file -------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished ``delay_sweep --preset tiny`` folder (4 configs)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main(["delay_sweep", "--preset", "tiny", "--out", str(out)]) == 0
    return out


def copy_of(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def refused_unchanged(capsys, out, argv):
    before = snapshot(out)
    err = one_line_error(capsys, [*argv, "--out", out])
    assert snapshot(out) == before  # byte for byte, nothing added (no .partial, no report)
    return err


def lines_of(out):
    return (out / "results.jsonl").read_bytes().splitlines(keepends=True)


def test_a_non_utf8_byte_in_a_middle_line_is_refused_naming_file_and_line(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    lines = lines_of(out)
    lines[1] = lines[1][:20] + b"\xff" + lines[1][20:]
    (out / "results.jsonl").write_bytes(b"".join(lines) + b'{"config_id": "cut sh')  # and a cut-off tail
    err = refused_unchanged(capsys, out, ["delay_sweep", "--preset", "tiny"])
    assert "results.jsonl line 2" in err and "move it away" in err, err


def test_random_bytes_are_refused_and_nothing_moved_to_partial(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "results.jsonl").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    err = refused_unchanged(capsys, out, ["delay_sweep", "--preset", "tiny"])
    assert "results.jsonl line" in err, err


def test_results_file_that_is_a_directory(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").mkdir()
    err = refused_unchanged(capsys, out, ["delay_sweep", "--preset", "tiny"])
    assert "results.jsonl is a directory" in err, err


@pytest.mark.parametrize("value", ["missing", "high", [0.5]])
def test_record_without_a_numeric_test_accuracy_is_refused_before_the_report(capsys, finished, tmp_path, value):
    out = copy_of(finished, tmp_path)
    lines = lines_of(out)
    rec = json.loads(lines[2])
    if value == "missing":
        del rec["test_accuracy"]
    else:
        rec["test_accuracy"] = value
    lines[2] = (json.dumps(rec) + "\n").encode()
    (out / "results.jsonl").write_bytes(b"".join(lines))
    err = refused_unchanged(capsys, out, ["delay_sweep", "--preset", "tiny"])
    assert "results.jsonl line 3" in err and "test_accuracy" in err, err


def test_another_study_in_the_same_folder_is_refused(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    err = refused_unchanged(capsys, out, ["warmup", "--preset", "tiny"])
    assert "holds the study delay_sweep" in err, err


def test_another_data_source_in_the_same_folder_is_refused(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    data = write_idx(tmp_path / "idx")
    err = refused_unchanged(capsys, out, ["delay_sweep", "--preset", "tiny", "--data", f"idx:{data}"])
    assert "holds delay_sweep on --data digits" in err, err


def test_the_same_study_resumes_in_its_folder(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = (out / "results.jsonl").read_bytes()
    assert main(["delay_sweep", "--preset", "tiny", "--out", str(out)]) == 0
    assert (out / "results.jsonl").read_bytes() == before
    assert json.loads((out / "study.json").read_text())["study"] == "delay_sweep"


def test_a_folder_whose_run_stopped_before_any_result_is_free_again(capsys, tmp_path):
    out = tmp_path / "out"
    bad = write_idx(tmp_path / "idx", n_test=0)
    one_line_error(capsys, ["delay_sweep", "--preset", "tiny", "--data", f"idx:{bad}", "--out", out])
    assert sorted(os.listdir(out)) == ["study.json"]
    # another data source may take the folder: nothing of the first run is in it
    from experiments.common import claim_out_dir

    assert claim_out_dir(str(out), "delay_sweep", "digits") is None


def test_unwritable_out_is_refused_before_any_work(capsys, tmp_path, monkeypatch):
    from experiments import common

    real_open = os.open

    def no_write(path, *a, **k):
        if ".write-check-" in str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(common.os, "open", no_write)
    t0 = time.perf_counter()
    err = one_line_error(capsys, ["delay_distribution", "--preset", "tiny", "--out", tmp_path / "ro"])
    assert "cannot write to --out" in err and "Permission denied" in err, err
    assert time.perf_counter() - t0 < 30
    assert os.listdir(tmp_path / "ro") == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_out_really(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = one_line_error(capsys, ["delay_distribution", "--preset", "tiny", "--out", ro])
        assert "cannot write to --out" in err
    finally:
        ro.chmod(0o755)


# --- figures, progress bars, README ------------------------------------------------------------------------------


def test_shares_figure_with_thousands_of_workers_is_cheap(tmp_path):
    from experiments import plots

    n = 5000
    shares = np.random.default_rng(0).dirichlet(np.ones(n), size=3)
    t0 = time.perf_counter()
    plots.worker_shares(["pure", "random", "shuffle"], shares, str(tmp_path / "shares.png"),
                        predicted=shares[0], title="n = 5000")
    assert time.perf_counter() - t0 < 20
    assert (tmp_path / "shares.png").stat().st_size < 1_000_000


def test_progress_bars_write_nothing_to_a_file_that_is_not_a_terminal(tmp_path):
    buf = io.StringIO()
    with progress(total=3, desc="configs", file=buf) as bar:
        bar.update(3)
        bar.set_postfix_str("acc=0.5")
    assert buf.getvalue() == ""
    with open(tmp_path / "log", "w") as f, progress(total=3, desc="configs", file=f) as bar:
        bar.update(3)
    assert (tmp_path / "log").read_text() == ""


def test_readme_puts_seconds_in_timing_jsonl_and_lists_what_is_checked():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    bullet = readme[readme.index("- `results.jsonl`: one JSON object per config"):]
    bullet = bullet[: bullet.index("\n- ")]
    assert "`timing.jsonl`" in bullet and "`seconds`" in bullet.split("`timing.jsonl`")[1]
    section = readme[readme.index("### What is checked"):]
    for item in ("clip_norm", "dc_lambda", "accumulate", "max_staleness", "backup_workers", "per_worker",
                 "straggler fraction", "uniform", "--time-spread", "--data-dir", "results.jsonl", "study.json"):
        assert item in section, item
