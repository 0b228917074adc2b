"""A self-contained interactive 3D viewer of a few molecules: one HTML file, no network.

:func:`viewer_html` writes the molecules' atoms (element, x, y, z in Å, centred) and bonds (their own
bonds, else EDM's distance rule: :func:`molgen.chem.build.bond_matrix`) as JSON into a page with a
small inline JavaScript canvas renderer: atoms as shaded circles in element colours, bonds as lines
(one per bond order), drag to rotate, wheel to zoom, a selector for the molecule. No script, style
or font is loaded from anywhere, so the file opens offline and from MLflow's artifact view.
Molecules without finite positions are skipped, and the page says how many.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from molgen.chem.build import bond_matrix, mol_to_smiles
from molgen.chem.elements import Molecule3D
from molgen.io_utils import atomic_write_text

#: CPK-like colours and drawing radii (Å) of molgen's elements.
COLOURS = {"H": "#f2f2f2", "C": "#7d7d7d", "N": "#3050f8", "O": "#ff2a1a", "F": "#7fd04a"}
RADII = {"H": 0.28, "C": 0.42, "N": 0.40, "O": 0.40, "F": 0.38}
DEFAULT_LIMIT = 8


def formula(mol: Molecule3D) -> str:
    """Hill formula (C, H, then alphabetical), e.g. ``C2H6O``."""
    counts = Counter(mol.symbols)
    head = [e for e in ("C", "H") if e in counts] if "C" in counts else []
    order = head + sorted(e for e in counts if e not in head)
    return "".join(f"{el}{counts[el] if counts[el] > 1 else ''}" for el in order)


def molecule_record(mol: Molecule3D, index: int) -> dict[str, Any]:
    """The JSON the page draws for one molecule with finite positions."""
    pos = np.asarray(mol.positions, dtype=float).reshape(-1, 3)
    pos = pos - pos.mean(axis=0)
    bonds = bond_matrix(mol)
    upper = np.zeros((0, 2), dtype=int) if bonds is None else np.argwhere(np.triu(np.asarray(bonds), 1) > 0)
    pairs = [[int(i), int(j), int(bonds[i, j])] for i, j in upper]
    smiles = mol_to_smiles(mol)
    label = f"#{index}  {formula(mol)}  {smiles if smiles else '(invalid)'}"
    atoms = [[s, *(round(float(c), 3) for c in xyz)] for s, xyz in zip(mol.symbols, pos)]
    return {"label": label, "atoms": atoms, "bonds": pairs}


def viewer_html(mols: Sequence[Molecule3D], *, title: str = "molgen samples", limit: int = DEFAULT_LIMIT) -> str:
    """The page for the first ``limit`` molecules that have finite positions (the others before them
    are skipped and counted)."""
    records, skipped = [], 0
    for i, mol in enumerate(mols):
        if len(records) >= limit:
            break
        if mol.has_coordinates:
            records.append(molecule_record(mol, i))
        else:
            skipped += 1
    note = f"{len(records)} molecule{'s' if len(records) != 1 else ''} shown"
    if skipped:
        note += f"; {skipped} skipped (no finite 3D positions)"
    data = json.dumps({"molecules": records, "colours": COLOURS, "radii": RADII}, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # safe inside <script>
    return _PAGE.replace("@TITLE@", html.escape(title)).replace("@NOTE@", html.escape(note)).replace("@DATA@", data)


def write_viewer(mols: Sequence[Molecule3D], path: str | os.PathLike, *, title: str = "molgen samples",
                 limit: int = DEFAULT_LIMIT) -> Path:
    """Write :func:`viewer_html` to ``path`` atomically; returns the path."""
    atomic_write_text(path, viewer_html(mols, title=title, limit=limit))
    return Path(path)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>@TITLE@</title>
<style>
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
#view{background:#fff;border:1px solid #ccc;border-radius:6px;cursor:grab;touch-action:none;display:block}
select{font:inherit;padding:2px 4px;max-width:640px}
.note{color:#666;font-size:90%;margin:6px 0}
</style></head><body>
<h3 style="margin:0 0 8px">@TITLE@</h3>
<div><select id="pick"></select></div>
<p class="note" id="note">@NOTE@ &middot; drag to rotate, wheel to zoom</p>
<canvas id="view" width="640" height="480"></canvas>
<script id="molgen-data" type="application/json">@DATA@</script>
<script>
(function(){
"use strict";
var D=JSON.parse(document.getElementById("molgen-data").textContent);
var cv=document.getElementById("view"),cx=cv.getContext("2d"),pick=document.getElementById("pick");
var R=[1,0,0,0,1,0,0,0,1],zoom=1,cur=0,drag=null;
function mul(a,b){var r=[],i,j;for(i=0;i<3;i++)for(j=0;j<3;j++)r[3*i+j]=a[3*i]*b[j]+a[3*i+1]*b[3+j]+a[3*i+2]*b[6+j];return r;}
function rot(ax,ay){var c=Math.cos(ax),s=Math.sin(ax),X=[1,0,0,0,c,-s,0,s,c];
 c=Math.cos(ay);s=Math.sin(ay);var Y=[c,0,s,0,1,0,-s,0,c];R=mul(mul(Y,X),R);}
function shade(hex,f){var n=parseInt(hex.slice(1),16),r=n>>16,g=(n>>8)&255,b=n&255;
 function m(v){return Math.max(0,Math.min(255,Math.round(f>1?v+(255-v)*(f-1):v*f)));}
 return "rgb("+m(r)+","+m(g)+","+m(b)+")";}
function draw(){
 var w=cv.width,h=cv.height;cx.clearRect(0,0,w,h);
 if(!D.molecules.length){cx.fillStyle="#666";cx.font="16px sans-serif";cx.fillText("no molecule with 3D coordinates",20,40);return;}
 var m=D.molecules[cur],P=[],ext=1,i;
 for(i=0;i<m.atoms.length;i++){var a=m.atoms[i],x=a[1],y=a[2],z=a[3];
  P.push({e:a[0],x:R[0]*x+R[1]*y+R[2]*z,y:R[3]*x+R[4]*y+R[5]*z,z:R[6]*x+R[7]*y+R[8]*z});
  ext=Math.max(ext,Math.sqrt(x*x+y*y+z*z)+0.6);}
 var s=zoom*0.45*Math.min(w,h)/ext;
 function sx(p){return w/2+s*p.x;} function sy(p){return h/2-s*p.y;}
 cx.lineCap="round";
 m.bonds.forEach(function(b){var p=P[b[0]],q=P[b[1]],x1=sx(p),y1=sy(p),x2=sx(q),y2=sy(q);
  var dx=x2-x1,dy=y2-y1,L=Math.sqrt(dx*dx+dy*dy)||1,ox=-dy/L,oy=dx/L,k,o=b[2],g=Math.max(2,0.09*s);
  cx.strokeStyle="#555";cx.lineWidth=Math.max(1.5,0.06*s);
  for(k=0;k<o;k++){var off=(k-(o-1)/2)*g;cx.beginPath();cx.moveTo(x1+ox*off,y1+oy*off);cx.lineTo(x2+ox*off,y2+oy*off);cx.stroke();}});
 P.slice().sort(function(a,b){return a.z-b.z;}).forEach(function(p){
  var r=Math.max(0.5,s*(D.radii[p.e]||0.4)*(1+0.15*p.z/ext)),x=sx(p),y=sy(p),col=D.colours[p.e]||"#ff66cc";
  var g=cx.createRadialGradient(x-0.35*r,y-0.35*r,0.1*r,x,y,r);
  g.addColorStop(0,shade(col,1.6));g.addColorStop(0.55,col);g.addColorStop(1,shade(col,0.45));
  cx.beginPath();cx.arc(x,y,r,0,2*Math.PI);cx.fillStyle=g;cx.fill();
  cx.lineWidth=0.6;cx.strokeStyle="rgba(0,0,0,0.35)";cx.stroke();});
}
D.molecules.forEach(function(m,i){var o=document.createElement("option");o.value=i;o.textContent=m.label;pick.appendChild(o);});
function reset(){R=[1,0,0,0,1,0,0,0,1];zoom=1;rot(0.35,0.5);draw();}
pick.onchange=function(){cur=+pick.value;reset();};
cv.addEventListener("pointerdown",function(e){drag=[e.clientX,e.clientY];cv.setPointerCapture(e.pointerId);cv.style.cursor="grabbing";});
cv.addEventListener("pointermove",function(e){if(!drag)return;rot((e.clientY-drag[1])*0.01,(e.clientX-drag[0])*0.01);drag=[e.clientX,e.clientY];draw();});
function up(){drag=null;cv.style.cursor="grab";}
cv.addEventListener("pointerup",up);cv.addEventListener("pointercancel",up);
cv.addEventListener("wheel",function(e){e.preventDefault();zoom=Math.max(0.3,Math.min(5,zoom*(e.deltaY<0?1.1:1/1.1)));draw();},{passive:false});
reset();
})();
</script></body></html>
"""
