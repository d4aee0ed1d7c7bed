"""The tutorial notebooks: each runs top to bottom without errors, and the committed ones are clean.

Every ``tutorials/*.ipynb`` is picked up by the glob, so a new notebook is covered without
editing this file. Notebooks run in a fresh kernel of this interpreter (the project's venv), in a
temporary working directory. A notebook asserts its own results (e.g. Lava == reference), so a
failing assertion in a cell fails its test here.

Executing a notebook costs a kernel start and the torch/Lava imports (~8 s on 2 busy cores).
Measured here (2 shared cores): 01 16–20 s (23 s with the cores fully loaded), 02 21–29 s.
Every notebook not listed in ``FAST`` (below ~20 s) is marked ``slow``, so a notebook added
later is slow until someone measures it and lists it.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: File names of notebooks that run in under ~20 s here (kernel start included); others are slow.
FAST = {"01_phase_coding.ipynb"}
KERNEL = "python3"
CELL_TIMEOUT_S = 600


def _param(path: pathlib.Path):
    marks = () if path.name in FAST else (pytest.mark.slow,)
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """Run kernels of this interpreter and keep their files in ``tmp_path``.

    * JUPYTER_PATH puts the venv's ``share/jupyter`` first, so kernel ``python3`` is the venv's
      ipykernel spec even if the user has a ``python3`` kernel of their own; its argv
      ``python -m ipykernel_launcher`` is resolved by jupyter_client to ``sys.executable``.
    * Connection files (JUPYTER_RUNTIME_DIR) and IPython's profile/history (IPYTHONDIR) go to
      ``tmp_path`` instead of the home directory.
    Returns the working directory for the notebook.
    """
    venv_share = pathlib.Path(sys.prefix) / "share" / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        p for p in (str(venv_share), os.environ.get("JUPYTER_PATH", "")) if p))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def execute(nb: nbformat.NotebookNode, workdir: pathlib.Path) -> nbformat.NotebookNode:
    """Execute ``nb`` in place in a fresh ``python3`` kernel with ``workdir`` as its cwd."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(workdir)}},
                            extra_arguments=["--InteractiveShell.colors=nocolor"])  # plain tracebacks
    client.execute()  # raises CellExecutionError (with the cell and traceback) on the first error
    return nb


def test_there_are_tutorials():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


def test_kernel_is_this_interpreter(kernel_env):
    """The kernel the notebooks run in is this Python (the venv), not some other python3."""
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.language == "python", spec.to_dict()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    execute(nb, kernel_env)
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert pathlib.Path(printed).resolve() == pathlib.Path(sys.executable).resolve(), (printed, spec.argv)


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    execute(nb, kernel_env)
    seconds = time.perf_counter() - start
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cells"
    for index, cell in enumerate(code_cells):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path.name}, code cell {index}: {errors[0].ename}: {errors[0].evalue}"
        assert cell.execution_count is not None, f"{path.name}, code cell {index} did not run"
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in NOTEBOOKS])
def test_committed_notebook_is_clean(path):
    """Notebooks are committed valid, with outputs cleared and no execution counts."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") in (None, KERNEL), nb.metadata.get("kernelspec")
    dirty = [index for index, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; clear them "
                       f"before committing (Jupyter's 'Clear All Outputs', or "
                       f"'jupyter nbconvert --clear-output --inplace {path.name}' where nbconvert is installed)")
    assert nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), \
        f"{path.name} must open with a markdown title ('# ...')"
