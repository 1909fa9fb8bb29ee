"""examples/quickstart.ipynb: committed without outputs, and runs end to end (nbclient, the venv's own Python) with
real results: shapes, a zoom that finds the gold sentence and bolds matching words, a measured dim sweep, the map."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600


def _cell(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    [cell] = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _has_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} keeps outputs: strip them"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[nbformat.NotebookNode, Path, float]:
    """The notebook run in a fresh folder by a kernel on this interpreter (sys.executable: the venv's Python, whatever
    kernelspecs the machine has), and how long it took."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    root = tmp_path_factory.mktemp("quickstart")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(json.dumps({"argv": argv, "display_name": "MuSES", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(root / "kernels")], ensure_native_kernel=False)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's inline backend shows figures
    env.update(MUSES_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)  # a cell that raises fails the test (CellExecutionError)
    finally:
        if km.has_kernel:  # nbclient shuts down only the kernels it started itself
            km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    print(f"quickstart.ipynb executed in {seconds:.0f} s")
    return nb, work, seconds


@pytest.mark.slow
def test_runs_on_the_venv_python_within_limits(executed: tuple[nbformat.NotebookNode, Path, float]) -> None:
    nb, _, seconds = executed
    assert all(o.output_type != "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert seconds < CELL_TIMEOUT_S, f"the notebook took {seconds:.0f} s"
    assert Path(_stdout(_cell(nb, "setup")).split("data: ")[1].split("\n")[0]).is_dir()


@pytest.mark.slow
def test_three_scales_show_shapes_and_spans(executed: tuple[nbformat.NotebookNode, Path, float]) -> None:
    out = _stdout(_cell(executed[0], "scales"))
    assert "document: (384,)" in out and "at 64 dims: (64,)" in out
    n_sentences = int(re.search(r"sentences: \((\d+), 384\)", out).group(1))  # type: ignore[union-attr]
    assert n_sentences == len(re.findall(r"^sentence \d+: chars \[\d+, \d+\)", out, flags=re.M)) >= 3
    assert re.search(r"tokens: \(\d+, 384\)", out)
    assert "best sentence for the query: It takes place mostly in the chloroplasts" in out


@pytest.mark.slow
def test_zoom_bolds_query_words_in_the_gold_sentence(executed: tuple[nbformat.NotebookNode, Path, float]) -> None:
    out = _stdout(_cell(executed[0], "zoom"))
    claim = out.split("claim: ")[1].split("\n")[0]
    gold = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("gold sentence ")]
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("1. "))
    assert lines[first].endswith("[relevant]"), out  # the evidence abstract ranks first
    top_sentence = lines[first + 1]
    assert "[gold]:" in top_sentence, out  # and its best sentence is a rationale sentence
    bolded = re.findall(r"\*\*(.+?)\*\*", top_sentence)
    assert bolded, out
    plain = top_sentence.split("[gold]: ", 1)[1].replace("**", "")
    assert plain in gold
    claim_words = {w.lower() for w in re.findall(r"\w+", claim)}
    assert any(w.lower() in claim_words or w.lower().rstrip("s") in claim_words for w in bolded), (bolded, claim)


@pytest.mark.slow
def test_dim_sweep_is_measured_and_grows(executed: tuple[nbformat.NotebookNode, Path, float]) -> None:
    cell = _cell(executed[0], "sweep")
    sweep = {int(d): float(v) for d, v in re.findall(r"spearman@(\d+) = ([\d.]+)", _stdout(cell))}
    assert list(sweep) == [32, 64, 128, 256, 384]
    values = list(sweep.values())
    assert sweep[384] >= sweep[32] + 0.02, sweep
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(values)), sweep  # non-decreasing, give or take
    assert 0.7 < sweep[384] < 0.95
    assert _has_image(cell)


@pytest.mark.slow
def test_the_map_is_written_and_shown(executed: tuple[nbformat.NotebookNode, Path, float]) -> None:
    import matplotlib.image

    nb, work, _ = executed
    cell = _cell(nb, "map")
    png = work / "quickstart_map" / "map.png"
    assert png.is_file() and matplotlib.image.imread(png).shape[0] > 500
    record = json.loads((work / "quickstart_map" / "map.json").read_text(encoding="utf-8"))
    assert len(record["documents"]) == 120
    assert "topic agreement" in _stdout(cell) and _has_image(cell)
