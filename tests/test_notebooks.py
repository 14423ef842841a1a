"""The five tutorial notebooks run top to bottom in the quick setting (KERAS_LLM_QUICK=1).

The jupytext sources (`notebooks/*.py`) are the source of truth; each is converted and
executed with nbclient in a temporary directory, and any cell error fails the test.
"""

import glob
import os

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
SOURCES = sorted(glob.glob(os.path.join(NOTEBOOKS, "0*.py")))


def test_five_notebooks_each_with_an_executed_ipynb():
    import nbformat

    assert len(SOURCES) == 5
    for source in SOURCES:
        committed = nbformat.read(source[:-3] + ".ipynb", as_version=4)
        code = [c.source for c in jupytext.read(source).cells if c.cell_type == "code"]
        cells = [c for c in committed.cells if c.cell_type == "code"]
        assert [c.source for c in cells] == code, f"{source}: .ipynb out of date"
        assert all(c.get("execution_count") for c in cells), f"{source}: not fully executed"
        outputs = [o for c in cells for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], source
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{source}: no plot"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: os.path.basename(p)[:-3])
def test_notebook_runs_in_the_quick_setting(source, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_LLM_QUICK", "1")
    notebook = jupytext.read(source)
    client = nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.output_type == "error"
    ]
    assert not errors
