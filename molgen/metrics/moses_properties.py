"""The molecular properties MOSES compares (logP, SA, QED, weight) and their Wasserstein-1 distance.

Part of the MOSES metric set (:mod:`molgen.metrics.moses`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType
from typing import Callable

from rdkit import Chem, RDConfig
from rdkit.Chem import Crippen, Descriptors
from rdkit.Chem import QED as _QED
from scipy.stats import wasserstein_distance

from molgen.errors import MolgenError

#: The property distributions compared (Wasserstein-1), MOSES's names and order.
PROPERTY_NAMES: tuple[str, ...] = ("logP", "SA", "QED", "weight")


@lru_cache(maxsize=1)
def _sascorer() -> ModuleType:
    path = f"{RDConfig.RDContribDir}/SA_Score/sascorer.py"
    spec = importlib.util.spec_from_file_location("molgen_rdkit_sascorer", path)
    try:
        if spec is None or spec.loader is None:
            raise FileNotFoundError(path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise MolgenError(f"RDKit's SA score is missing ({path}); reinstall rdkit") from None
    return module


def logp(mol: Chem.Mol) -> float:
    """Crippen logP (RDKit ``MolLogP``)."""
    return Crippen.MolLogP(mol)


def sa(mol: Chem.Mol) -> float:
    """Synthetic accessibility score (Ertl & Schuffenhauer 2009; RDKit Contrib ``sascorer``)."""
    return _sascorer().calculateScore(mol)


def qed(mol: Chem.Mol) -> float:
    """QED drug-likeness (Bickerton et al. 2012; RDKit ``QED.qed``)."""
    return _QED.qed(mol)


def qed_reusing_logp(mol: Chem.Mol, logp_value: float) -> float:
    """``QED.qed(mol)`` reusing an already computed Crippen logP of ``mol``.

    Mirrors ``rdkit.Chem.QED.properties`` term by term (its logP is a third of its cost);
    ``tests/test_moses_metrics.py`` checks it equals ``QED.qed``.
    """
    from rdkit.Chem import MolSurf
    from rdkit.Chem import rdMolDescriptors as rdmd

    m = Chem.RemoveHs(mol)
    if m.GetNumAtoms() != mol.GetNumAtoms():  # explicit H atoms: logP of ``mol`` differs
        logp_value = Crippen.MolLogP(m)
    props = _QED.QEDproperties(
        MW=rdmd._CalcMolWt(m),
        ALOGP=logp_value,
        HBA=sum(len(m.GetSubstructMatches(p)) for p in _QED.Acceptors if m.HasSubstructMatch(p)),
        HBD=rdmd.CalcNumHBD(m),
        PSA=MolSurf.TPSA(m),
        ROTB=rdmd.CalcNumRotatableBonds(m, rdmd.NumRotatableBondsOptions.Strict),
        AROM=len(Chem.GetSSSR(Chem.DeleteSubstructs(Chem.Mol(m), _QED.AliphaticRings))),
        ALERTS=sum(1 for alert in _QED.StructuralAlerts if m.HasSubstructMatch(alert)),
    )
    return _QED.qed(m, qedProperties=props)


def weight(mol: Chem.Mol) -> float:
    """Average molecular weight (RDKit ``Descriptors.MolWt``)."""
    return Descriptors.MolWt(mol)


PROPERTIES: dict[str, Callable[[Chem.Mol], float]] = {
    "logP": logp,
    "SA": sa,
    "QED": qed,
    "weight": weight,
}


def wasserstein(ref_values: Sequence[float], gen_values: Sequence[float]) -> float:
    """Wasserstein-1 distance between two empirical 1-D distributions (``scipy.stats``)."""
    return float(wasserstein_distance(ref_values, gen_values))
