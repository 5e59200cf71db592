"""Execute the analysis notebooks headless (nbclient) and export them to HTML (nbconvert).

The notebooks in ``notebooks/`` read their parameters from a first cell tagged ``parameters``,
which takes ``DIVEBATCH_RUNS`` (run folders, ``os.pathsep``-separated), ``DIVEBATCH_PROFILE`` and
``DIVEBATCH_REPORT_ROOT`` (the report's ``--out``) from the environment; :func:`execute` sets them
for the kernel it starts.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from divebatch.rundir import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# name -> what it shows (one sentence, used in the report's README)
NOTEBOOKS = {
    "speedup_vs_accuracy": (
        "Executed notebook: the speed-up versus accuracy trade-off (Pareto view per dataset "
        "and across hyperparameters) with its reading in words."
    ),
    "diversity_dynamics": (
        "Executed notebook: how gradient diversity evolves, how the batch size follows, and "
        "the relation n * Delta = 1 + B_simple to the gradient noise scale."
    ),
}


def resolve(notebook: str | Path) -> Path:
    """A notebook path, or a name of :data:`NOTEBOOKS` looked up in ``notebooks/``.

    Raises:
        FileNotFoundError: neither exists (the message lists the known names).
    """
    path = Path(notebook)
    if path.is_file():
        return path
    candidate = NOTEBOOK_DIR / f"{path.stem}.ipynb"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"notebook {str(notebook)!r} not found; allowed: a .ipynb path or one of {list(NOTEBOOKS)}")


def execute(
    notebook: str | Path,
    runs_dir: str | Path | list,
    profile: str,
    out_dir: str | Path,
    report_root: str | Path = ".",
    timeout: int = 600,
    kernel_name: str = "python3",
) -> tuple[Path, Path]:
    """Run a notebook top to bottom in a fresh kernel and write the executed copy and its HTML export.

    Args:
        notebook: path, or a name of :data:`NOTEBOOKS`.
        runs_dir: run folder(s) for ``DIVEBATCH_RUNS``; relative paths are kept relative (the kernel
            starts in the current directory) so no absolute path lands in the outputs.
        profile: for ``DIVEBATCH_PROFILE``.
        out_dir: where ``<name>.ipynb`` and ``<name>.html`` are written (created).
        report_root: ``DIVEBATCH_REPORT_ROOT``, the report's ``--out`` (for the synthetic verdict).
        timeout: seconds per cell.
        kernel_name: Jupyter kernel; ``python3`` is the current interpreter's ipykernel (the venv's).
    Returns:
        ``(executed_ipynb, html)``.
    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the executed copy is still written).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    src = resolve(notebook)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roots = [runs_dir] if isinstance(runs_dir, (str, Path)) else list(runs_dir)
    nb = nbformat.read(src, as_version=4)
    env = {
        **os.environ,
        "DIVEBATCH_RUNS": os.pathsep.join(str(r) for r in roots),
        "DIVEBATCH_PROFILE": profile,
        "DIVEBATCH_REPORT_ROOT": str(report_root),
    }
    # record_timing=False: no execution timestamps in the cells' metadata, so a rerun with the same
    # results leaves the committed notebook byte-identical (git status stays clean)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel_name,
        record_timing=False,
        resources={"metadata": {"path": os.getcwd()}},
    )
    ipynb, html = out_dir / src.name, out_dir / f"{src.stem}.html"
    try:
        client.execute(env=env)
    finally:
        _relative_paths(nb)
        nbformat.write(nb, ipynb)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html.write_text(body, encoding="utf-8")
    return ipynb, html


def _relative_paths(nb) -> None:
    """Make the repository's absolute path in stream outputs (warning lines name source files)
    repository-relative, so that committed notebooks carry no path of the machine they ran on."""
    prefix = str(REPO_ROOT) + os.sep
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and prefix in out.get("text", ""):
                out["text"] = out["text"].replace(prefix, "")


def show(fig, provenance: str | None = None) -> None:
    """Display a matplotlib figure in a notebook as PNG (works with any backend; the analysis forces
    Agg) and close it; ``provenance`` is drawn as a footer like in the saved figures."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    if provenance:
        fig.text(0.01, 0.005, provenance, fontsize=6, color="0.4", ha="left", va="bottom")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue()))


def markdown(text: str) -> None:
    """Display Markdown text (the generated readings) in a notebook."""
    from IPython.display import Markdown, display

    display(Markdown(text))
