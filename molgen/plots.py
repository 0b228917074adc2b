"""PNG figures for MLflow runs: a molecule grid, loss curves and property histograms.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas — never through
``pyplot`` — so nothing opens a window, no global backend is switched and figures are freed as soon
as they go out of scope. Every file is written atomically (:func:`molgen.io_utils.atomic_open`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molgen.io_utils import atomic_open

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI)


def _placeholder(path: str | os.PathLike, message: str, size: tuple[float, float] = (4.0, 2.0)) -> None:
    """A small PNG that says why there is nothing to show (an artifact should never be missing)."""
    fig = _new_figure(*size)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="0.3", wrap=True)
    _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Molecules
# --------------------------------------------------------------------------------------------------


def _depiction(mol: Any) -> Any | None:
    """A 2D-depiction copy of ``mol`` (implicit hydrogens, fresh 2D coordinates), or ``None``."""
    from rdkit import Chem
    from rdkit.Chem import rdDepictor
    from rdkit.Chem.Draw import rdMolDraw2D

    if mol is None or mol.GetNumAtoms() == 0:
        return None
    try:
        copy = Chem.Mol(mol)  # never touch the caller's conformers (often the generated 3D ones)
        try:
            copy = Chem.RemoveHs(copy)
        except Exception:  # unsanitizable molecules keep their explicit hydrogens
            pass
        copy.RemoveAllConformers()
        rdDepictor.Compute2DCoords(copy)
        return rdMolDraw2D.PrepareMolForDrawing(copy)
    except Exception:  # RDKit raises assorted errors on broken molecules: skip them
        return None


def molecule_grid_png(
    rdkit_mols: Sequence[Any],
    path: str | os.PathLike,
    n: int = 16,
    legends: Sequence[str] | None = None,
) -> int:
    """Draw up to ``n`` molecules as a grid PNG with ``rdkit.Chem.Draw.MolsToGridImage``.

    ``None`` entries and molecules RDKit cannot depict are skipped (with their legends). Without any
    drawable molecule the PNG is a placeholder that says so.

    Args:
        rdkit_mols: RDKit ``Mol`` objects (3D or not); they are not modified.
        path: output PNG.
        n: at most this many molecules, in order.
        legends: one caption per input molecule (e.g. SMILES or a property value).

    Returns:
        The number of molecules drawn.
    """
    from rdkit.Chem import Draw

    if legends is not None and len(legends) != len(rdkit_mols):
        raise ValueError(f"{len(legends)} legends for {len(rdkit_mols)} molecules")
    mols, captions = [], []
    for i, mol in enumerate(rdkit_mols):
        if len(mols) >= n:
            break
        depiction = _depiction(mol)
        if depiction is not None:
            mols.append(depiction)
            captions.append("" if legends is None else str(legends[i]))
    if not mols:
        _placeholder(path, "no valid molecules to draw")
        return 0
    image = Draw.MolsToGridImage(
        mols, molsPerRow=min(4, len(mols)), subImgSize=(250, 250), legends=captions
    )
    if not hasattr(image, "save"):  # inside IPython, RDKit may hand back PNG bytes instead of an image
        image = _png_bytes_to_image(image)
    with atomic_open(path, "wb") as fh:
        image.save(fh, format="PNG")
    return len(mols)


def _png_bytes_to_image(data: Any) -> Any:
    import io

    from PIL import Image

    raw = data.data if hasattr(data, "data") else data
    return Image.open(io.BytesIO(raw))


# --------------------------------------------------------------------------------------------------
# Curves and distributions
# --------------------------------------------------------------------------------------------------


def loss_curve_png(history: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike) -> None:
    """Plot each series of ``history`` (``{"loss": [(step, value), ...], "val/loss": ...}``) over steps.

    Non-finite points are left out. The y axis is logarithmic when every value is positive and the
    values span more than two decades (typical early-training losses), linear otherwise.
    """
    series = {}
    for name, points in history.items():
        pts = [(int(s), float(v)) for s, v in points if math.isfinite(float(v))]
        if pts:
            series[name] = sorted(pts)
    if not series:
        _placeholder(path, "no loss values yet")
        return
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, pts in series.items():
        steps, values = zip(*pts)
        ax.plot(steps, values, label=name, marker="." if len(pts) < 30 else None, linewidth=1.2)
    values = np.array([v for pts in series.values() for _, v in pts])
    if values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def property_histograms_png(
    samples: Mapping[str, Any],
    reference: Mapping[str, Any],
    path: str | os.PathLike,
    bins: int = 40,
) -> None:
    """One subplot per property: density histograms of generated ``samples`` over ``reference``.

    Both histograms of a property share their bins (over the union of finite values); a property
    present on one side only is drawn alone. Values are 1D array-likes, NaN/inf ignored.
    """
    names = list(reference) + [k for k in samples if k not in reference]
    names = [k for k in names if _finite(samples.get(k, [])).size or _finite(reference.get(k, [])).size]
    if not names:
        _placeholder(path, "no property values to compare")
        return
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _new_figure(4.0 * cols, 3.2 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ref, gen = _finite(reference.get(name, [])), _finite(samples.get(name, []))
        both = np.concatenate([ref, gen])
        lo, hi = float(both.min()), float(both.max())
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo - 0.5, lo + 0.5])
        for values, color, label in ((ref, "tab:gray", "reference"), (gen, "tab:blue", "samples")):
            if values.size:
                label = f"{label} ({values.size})"
                ax.hist(values, bins=edges, density=True, alpha=0.5, color=color, label=label)
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def overlaid_histograms_png(
    panels: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    bins: int = 50,
    reference: str = "reference",
) -> None:
    """One subplot per panel, every series of a panel overlaid as a density on shared bins.

    ``panels``: title -> {series label -> 1D values}. The series named ``reference`` is drawn as a
    filled grey histogram, the others as coloured outlines (so several generators stay legible).
    Panels without finite values are left out; with none at all the PNG is a placeholder.
    """
    shown = {title: {k: _finite(v) for k, v in series.items()} for title, series in panels.items()}
    shown = {title: {k: v for k, v in series.items() if v.size} for title, series in shown.items()}
    shown = {title: series for title, series in shown.items() if series}
    if not shown:
        _placeholder(path, "no values to compare")
        return
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = _new_figure(4.2 * cols, 3.2 * rows)
    for i, (title, series) in enumerate(shown.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        both = np.concatenate(list(series.values()))
        lo, hi = np.quantile(both, [0.001, 0.999]) if both.size > 100 else (both.min(), both.max())
        edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.array([lo - 0.5, lo + 0.5])
        colours = iter(f"C{k}" for k in range(10))
        for label, values in series.items():
            if label == reference:
                ax.hist(values, bins=edges, density=True, color="0.75", label=f"{label} ({values.size})")
            else:
                ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.4, color=next(colours, "k"),
                        label=f"{label} ({values.size})")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
