"""Chemistry: elements, bonds from distances (EDM rules), stability, RDKit molecules."""

from rdkit import RDLogger

# Generated molecules are often chemically broken; RDKit's per-molecule complaints are counted by
# molgen's metrics (invalid_reasons) instead of being printed.
RDLogger.DisableLog("rdApp.*")
