"""The notebooks: thin, parameterised, committed without outputs, and the whole chain runs."""
import ast
import json
from pathlib import Path

import nbformat
import pytest

from pcl import reproduce, schedules

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = reproduce.notebooks(ROOT / "notebooks")
FIGURES = ["F0_training_curves", "F0_gmp_schedules", "F1_accuracy_vs_sparsity",
           "F2_pies_vs_sparsity", "F3_pies_per_class", "F4_pie_overlap",
           "F5_qscore_dense_vs_pruned", "F6_depth_dense_vs_pruned", "F6b_depth_distributions",
           "F7_umap", "F8_schedule_effect", "F9_pie_gallery", "F9b_unique_pies"]
TABLES = ["runs", "pies", "qscores", "pie_counts", "depths", "claims", "images"]


def test_nine_numbered_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 10)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    src = tagged[0].source
    for name in ("preset", "dataset", "runs", "data_root", "figures", "results"):
        assert f"{name} = " in src


def trained_stages(path: Path) -> set[str]:
    """The stages a notebook trains: the literal stage tuples of its ``study.train_stages`` calls."""
    out: set[str] = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or "train_stages" not in cell.source:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "train_stages":
                out |= set(ast.literal_eval(node.args[1]))
    return out


def test_every_planned_stage_is_trained_by_a_notebook():
    """make reproduce from an empty store trains every stage study.plan lists, the floor included."""
    by_notebook = {p.name: trained_stages(p) for p in NOTEBOOKS}
    trained = set().union(*by_notebook.values())
    assert set(schedules.stages()) <= trained, f"no notebook trains {set(schedules.stages()) - trained}"
    assert "floor" in by_notebook["01_train_dense.ipynb"]
    assert trained_stages(NOTEBOOKS[3]) == set()  # evaluation notebooks train nothing
    for p in NOTEBOOKS[:3]:
        assert "stale_after" in reproduce.declared_parameters(p), p.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    raw = json.loads(path.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [], f"{path.name} has outputs: run nbstripout"
            assert cell.get("execution_count") is None


def test_failing_notebook_stops_chain(tmp_path):
    """A failing cell stops the chain, names the notebook and error, and keeps the partial copy."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name, src in (("01_ok.ipynb", "x = 1"), ("02_bad.ipynb", "raise ValueError('boom 42')"),
                      ("03_never.ipynb", "y = 2")):
        nb = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell("preset = 'smoke'")
        p.metadata["tags"] = ["parameters"]
        nb.cells = [p, nbformat.v4.new_code_cell(src)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"02_bad\.ipynb.*ValueError: boom 42"):
        reproduce.run_chain("smoke", dataset="synthetic", folder=folder, out=out, runs=str(tmp_path / "r"),
                            figures=str(tmp_path / "f"), results=str(tmp_path / "t"))
    assert (out / "01_ok.ipynb").exists() and (out / "02_bad.ipynb").exists()
    assert not (out / "03_never.ipynb").exists()
    partial = nbformat.read(out / "02_bad.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in partial.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.slow
def test_whole_chain_smoke_synthetic(tmp_path, monkeypatch):
    """Every notebook runs under papermill (smoke preset with SimCLR as a third method, synthetic
    data) and every figure and table file is produced and non-empty."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "executed"
    done = reproduce.run_chain("smoke-extended", dataset="synthetic", out=out, runs="runs",
                               folder=ROOT / "notebooks")
    assert [p.name for p in done] == [p.name for p in NOTEBOOKS]
    tag = "smoke-extended-synthetic"
    fig_dir, tab_dir = tmp_path / "figures" / tag, tmp_path / "results" / tag
    for f in FIGURES:
        for ext in ("png", "pdf"):
            p = fig_dir / f"{f}.{ext}"
            assert p.exists() and p.stat().st_size > 1000, p
    for t in TABLES:
        p = tab_dir / f"{t}.csv"
        assert p.exists() and len(p.read_text().splitlines()) > 1, p
    # SimCLR trained, was evaluated and reaches the claims table (claim 1 asks it against CE)
    import pandas as pd

    assert set(pd.read_csv(tab_dir / "runs.csv").method) == {"ce", "supcon", "simclr"}
    assert pd.read_csv(tab_dir / "claims.csv").comparison.str.contains("simclr").any()
    # executed copies carry outputs (they are the documentation)
    nb = nbformat.read(out / "01_train_dense.ipynb", as_version=4)
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
