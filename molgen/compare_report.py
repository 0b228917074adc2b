"""The self-contained HTML report of ``molgen compare`` (no network needed to view it).

Sections: the contenders and where their molecules came from; one table per metric section of
:data:`molgen.compare.COLUMNS` (one row per generator, the best value of each column marked); overlaid
histograms (molecular properties of MOSES, bond lengths and angles of the reference's most common
types); a molecule grid per generator. Figures are PNGs embedded as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path

import numpy as np

from molgen.compare import Comparison
from molgen.io_utils import atomic_open

#: Types of each geometry kind drawn (the reference's most common ones).
TOP_TYPES = {"bond_length": 4, "bond_angle": 3}
GRID_MOLECULES = 12


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def property_panels(comparison: Comparison) -> dict[str, dict[str, np.ndarray]]:
    """MOSES's molecular properties: the reference's, then every contender's, per property."""
    panels: dict[str, dict[str, np.ndarray]] = {}
    for c, r in zip(comparison.contenders, comparison.reports):
        for prop, values in r.reference_properties.items():
            panels.setdefault(prop, {}).setdefault("reference", np.asarray(values, float))
        for prop, values in r.sample_properties.items():
            panels.setdefault(prop, {})[c.label] = np.asarray(values, float)
    return panels


def geometry_panels(comparison: Comparison) -> dict[str, dict[str, np.ndarray]]:
    """Bond lengths / angles of the reference's most common types, reference and every contender."""
    from molgen.metrics.geometry_features import angle_label, bond_label

    measured = [(c.label, r.geometry) for c, r in zip(comparison.contenders, comparison.reports) if r.geometry]
    if not measured:
        return {}
    reference = measured[0][1][1]
    panels: dict[str, dict[str, np.ndarray]] = {}
    for kind, unit, label in (("bond_length", "Å", bond_label), ("bond_angle", "deg", angle_label)):
        codes, values = reference.values(kind)
        kinds, counts = np.unique(codes, return_counts=True)
        for code in kinds[np.argsort(-counts, kind="stable")][:TOP_TYPES[kind]]:
            title = f"{kind.replace('_', ' ')} {label(int(code))} ({unit})"
            panels[title] = {"reference": values[codes == code]}
            for name, (samples, _) in measured:
                s_codes, s_values = samples.values(kind)
                panels[title][name] = s_values[s_codes == code]
    return panels


def _table(comparison: Comparison, section: str) -> str:
    cols = [c for c in comparison.columns() if c[0] == section]
    if not cols:
        return ""
    head = "".join(f"<th>{html.escape(k)} {'↑' if b == 'high' else '↓'}</th>" for _, k, b in cols)
    best = {k: comparison.best_rows(k, b) for _, k, b in cols}
    rows = []
    for i, c in enumerate(comparison.contenders):
        cells = []
        for _, key, _ in cols:
            v = comparison.value(i, key)
            text = "–" if v is None else f"{v:.4g}"
            cells.append(f'<td class="best">{text} ★</td>' if i in best[key] else f"<td>{text}</td>")
        rows.append(f"<tr><th>{html.escape(c.label)}</th>{''.join(cells)}</tr>")
    return (f"<h3>{html.escape(section)}</h3><table><tr><th>generator</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _notes(comparison: Comparison) -> str:
    items = []
    for c, r in zip(comparison.contenders, comparison.reports):
        extra = [f"{int(r.metrics.get('n', 0))} records ({r.read.format})"]
        if r.oracle_version:
            extra.append(f"oracle {r.oracle_version}")
        extra += [f"skipped {g}: {why}" for g, why in r.skipped.items()]
        invalid = {k.split("/", 1)[1]: int(v) for k, v in r.metrics.items() if k.startswith("invalid/")}
        if invalid:
            extra.append("invalid: " + ", ".join(f"{k} {v}" for k, v in sorted(invalid.items())))
        items.append(f"<li><b>{html.escape(c.label)}</b>: {html.escape(c.source)}; "
                     f"{html.escape('; '.join(extra))}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def report_html(comparison: Comparison, *, title: str = "molgen compare") -> str:
    """The report as one HTML string (figures drawn into a temporary folder and embedded)."""
    from molgen.compare import COLUMNS
    from molgen.plots import molecule_grid_png, overlaid_histograms_png

    sections = list(dict.fromkeys(s for s, _, _ in COLUMNS))
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Reference: <b>{html.escape(comparison.reference)}</b>. Every generator was scored by "
             "<code>molgen benchmark</code>'s rules in this one run; ↑ higher is better, ↓ lower is better, "
             "★ marks the best value of a column. All metrics of every generator are in compare.json.</p>",
             "<h2>Generators</h2>", _notes(comparison), "<h2>Metrics</h2>"]
    parts += [_table(comparison, s) for s in sections]
    with tempfile.TemporaryDirectory() as tmp:
        figures = []
        for name, panels in (("Molecular properties (MOSES)", property_panels(comparison)),
                             ("Local geometry", geometry_panels(comparison))):
            if panels:
                png = Path(tmp) / f"{len(figures)}.png"
                overlaid_histograms_png(panels, png)
                figures.append(f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="{_png_uri(png)}">')
        if figures:
            parts += ["<h2>Distributions</h2>", *figures]
        parts.append("<h2>Molecules</h2>")
        for k, (c, r) in enumerate(zip(comparison.contenders, comparison.reports)):
            png = Path(tmp) / f"grid{k}.png"
            mols = [rec.mol for rec in r.read.records if rec.mol is not None][:GRID_MOLECULES]
            drawn = molecule_grid_png(mols, png, n=GRID_MOLECULES)
            parts.append(f"<h3>{html.escape(c.label)}</h3><p>the first {drawn} valid molecules</p>"
                         f'<img alt="{html.escape(c.label)} molecules" src="{_png_uri(png)}">')
    return _PAGE.format(title=html.escape(title), body="\n".join(parts))


def write_report(comparison: Comparison, path: str | os.PathLike, *, title: str = "molgen compare") -> Path:
    """Write :func:`report_html` to ``path`` atomically."""
    text = report_html(comparison, title=title)
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #e6f4e6; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""
