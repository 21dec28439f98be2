"""The Colab notebook runs top to bottom on CPU with the tiny presets, so it never rots.

The notebook is executed with nbclient in a fresh kernel of this very interpreter (a throwaway kernel spec,
so neither an installed ``python3`` spec that points elsewhere nor a missing one matters), with the working
directory at the repository root, ``ASGD_NOTEBOOK_PRESET=tiny`` and its results under a temporary directory
(``ASGD_NOTEBOOK_OUT``). Outside Colab the notebook installs nothing.
"""

import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "reproduce_delayed_gradients.ipynb")
KERNEL = "asgd-notebook-test"

# The files each study writes, relative to the notebook's output root.
EXPECTED_FILES = [
    "delay_distribution/results.jsonl",
    "delay_distribution/mean_vs_workers.png",
    "delay_distribution/histograms.png",
    "delay_distribution/report.md",
    "delay_sweep/results.jsonl",
    "delay_sweep/heatmap.png",
    "adam_vs_sgd/results.jsonl",
    "adam_vs_sgd/curves.png",
    "adam_vs_sgd/report.md",
    "warmup/results.jsonl",
    "warmup/curves.png",
    "warmup/report.md",
    "ad_psgd/results.jsonl",
    "ad_psgd/accuracy.png",
    "ad_psgd/time_per_epoch.png",
    "ad_psgd/consensus.png",
    "ad_psgd/report.md",
    "dean2012/results.jsonl",
    "dean2012/model_parallel.png",
    "dean2012/failure.png",
    "dean2012/report.md",
    "transformer_async/results.jsonl",
    "transformer_async/curves.png",
    "transformer_async/learning_rates.png",
    "transformer_async/report.md",
    "time_to_accuracy/results.jsonl",
    "time_to_accuracy/time_to_target.png",
    "time_to_accuracy/grad_norm_vs_time.png",
    "time_to_accuracy/lenet_time_to_accuracy.png",
    "time_to_accuracy/report.md",
]


def _sources(nb):
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_notebook_is_clean_and_parametrised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "outputs stored"
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("REPO_URL", "PRESET", "INSTALL"):
        assert f"{name} = " in tagged[0].source
    text = "\n".join(_sources(nb))
    assert "requirements-tpu.txt" in text and "ASGD_NOTEBOOK_PRESET" in text and "ASGD_NOTEBOOK_OUT" in text


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch):
    """A kernel spec that runs ipykernel with sys.executable, found first through JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "asgd_jax notebook test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    old = os.environ.get("JUPYTER_PATH")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(tmp_path / "jupyter"), old])))
    return KERNEL


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch, kernel_of_this_python):
    out = tmp_path / "runs"
    # The kernel inherits this environment.
    monkeypatch.setenv("ASGD_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("ASGD_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name=kernel_of_this_python,
        resources={"metadata": {"path": ROOT}},
    )
    try:
        client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    finally:
        nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # kept for inspection

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code"), "a cell did not run"

    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "preset: tiny" in text
    assert "backend 'cpu'" in text

    missing = [f for f in EXPECTED_FILES if not (out / f).is_file()]
    assert not missing, f"not written: {missing}"
    for f in EXPECTED_FILES:
        if f.endswith(".png"):
            assert (out / f).stat().st_size > 5_000, f

    # Every figure shown inline (10 PNGs) and the reports rendered as Markdown.
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 10
    markdown = [o for o in outputs if o.output_type == "display_data" and "text/markdown" in o.data]
    assert len(markdown) >= 6  # five report.md files and the delay sweep's summary table
