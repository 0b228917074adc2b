"""The ``embedding`` metric group of ``molgen benchmark``: distances in the oracle's learned space.

The property oracle (:mod:`molgen.oracle`) maps a 3D molecule to an invariant embedding (its pooled
graph representation) and to predictions of the six EDM properties. For the samples and for the
reference set this module computes

- ``FD_emb``, ``KID_emb`` / ``KID_emb_std``, ``MMD_emb``, ``KDE_ref_under_samples``,
  ``KDE_samples_under_ref`` on the embeddings (:mod:`molgen.metrics.embedding`);
- ``W1/<prop>`` for ``alpha gap homo lumo mu Cv``: Wasserstein-1 distances of the oracle's
  predictions (user units) on the samples and on the reference;
- ``oracle/unusable``: sample records the oracle cannot embed (no readable 3D molecule of H C N O F
  atoms, or no atoms / non-finite coordinates); they are left out of the distances above.
  Invalid (non-sanitizable) molecules with usable coordinates are embedded: the oracle reads only
  atom types and positions.

The oracle reads geometry, so these metrics exist only when the samples are 3D (XYZ, 3D SDF) and
the reference has coordinates: QM9 (``--reference qm9``: a fixed random subset of at most 10,000
molecules of the EDM test split, seed 0) or a 3D reference file. SMILES / 2D inputs and the MOSES
reference (SMILES only) get no ``embedding`` keys.

The oracle weights are ``$MOLGEN_ORACLE`` if set, else ``molgen/pretrained/oracle.pt``; when the
file is missing or unreadable the group is skipped with a one-line warning on stderr. Every value
of the group depends on the oracle: callers report :attr:`~molgen.oracle.PropertyOracle.version`
with it (``molgen benchmark``: ``oracle_version``). The QM9 reference's predictions and embeddings
are cached in ``<cache>/oracle_reference/qm9_test-<version>-<hash>.npz``, keyed by the oracle
version, its backbone configuration, ``molgen/oracle.py``'s source and the reference rows / QM9
ids; the file also records the version, and a cache of another version is never reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from molgen.chem.elements import Molecule3D
from molgen.errors import MolgenError
from molgen.metrics import embedding as E

logger = logging.getLogger(__name__)

#: Environment variable overriding the oracle weights file.
from molgen.oracle import ORACLE_ENV  # noqa: E402,F401  (re-exported)
#: Molecules of the QM9 test split used as the reference (at most).
QM9_REFERENCE_SIZE = 10_000
#: Bump when the cached reference features change meaning.
CACHE_VERSION = "2"


def oracle_path() -> Path:
    """``$MOLGEN_ORACLE`` if set, else the shipped ``molgen/pretrained/oracle.pt``."""
    from molgen.oracle import oracle_file

    return oracle_file()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class OracleFeatures:
    """Oracle outputs for a set: ``preds`` ``[n, P]`` (user units) and ``embeddings`` ``[n, D]``,
    NaN rows for molecules the oracle cannot embed."""

    preds: np.ndarray
    embeddings: np.ndarray

    def usable(self) -> np.ndarray:
        """``[n]`` bool: rows with finite predictions and embeddings."""
        return np.isfinite(self.preds).all(1) & np.isfinite(self.embeddings).all(1)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def oracle_features(oracle, mols: Sequence[Molecule3D | None]) -> OracleFeatures:
    """Oracle outputs of ``mols``; ``None`` entries (unreadable records) get NaN rows."""
    from molgen.oracle import oracle_outputs

    rows = [i for i, m in enumerate(mols) if m is not None]
    preds = np.full((len(mols), len(oracle.properties)), np.nan)
    embs = np.full((len(mols), oracle.embedding_dim), np.nan)
    if rows:
        p, e = oracle_outputs(oracle, [mols[i] for i in rows], device=_device())
        preds[rows], embs[rows] = p, e
    return OracleFeatures(preds, embs)


def qm9_reference_rows(data, size: int = QM9_REFERENCE_SIZE, seed: int = 0) -> np.ndarray:
    """Sorted rows of a fixed random subset (``RandomState(seed)``) of ``min(size, |test|)``
    molecules of the EDM test split of ``data``."""
    from molgen.data.qm9 import edm_splits

    test = edm_splits(data.num_molecules)["test"].numpy()
    k = min(size, len(test))
    return np.sort(test[np.random.RandomState(seed).choice(len(test), k, replace=False)])


def reference_cache_path(oracle, data, rows: np.ndarray, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`qm9_reference_features` caches the oracle outputs of ``rows`` of ``data``:
    named by ``oracle.version`` and a hash of it, the oracle's backbone configuration,
    ``molgen/oracle.py``'s source and the rows / QM9 ids."""
    from molgen import oracle as oracle_module
    from molgen.data.qm9 import resolve_cache_dir

    version = oracle.version
    h = hashlib.sha256(f"molgen-oracle-reference:{CACHE_VERSION}\n{version}\n".encode())
    h.update(json.dumps([asdict(oracle.bcfg), list(oracle.properties)], sort_keys=True).encode())
    h.update(Path(oracle_module.__file__).read_bytes())
    h.update(rows.astype(np.int64).tobytes())
    h.update(data.index.numpy()[rows].astype(np.int64).tobytes())
    return resolve_cache_dir(cache_dir) / "oracle_reference" / f"qm9_test-{version}-{h.hexdigest()[:16]}.npz"


def qm9_reference_features(oracle, oracle_file: str | os.PathLike | None, data, *, size: int = QM9_REFERENCE_SIZE,
                           cache_dir: str | os.PathLike | None = None) -> OracleFeatures:
    """Oracle outputs of :func:`qm9_reference_rows` of ``data``, cached on disk (see module doc).

    ``oracle_file`` is not read (the cache is keyed by ``oracle.version``, computed from the loaded
    weights); it stays for callers that pass it.
    """
    from molgen.io_utils import atomic_open

    rows = qm9_reference_rows(data, size)
    version = oracle.version
    path = reference_cache_path(oracle, data, rows, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = OracleFeatures(z["preds"], z["embeddings"])
                cached_version = str(z["oracle_version"]) if "oracle_version" in z.files else None
            if cached_version != version:
                logger.warning("ignoring oracle reference cache %s of oracle version %s (this oracle: %s)",
                               path, cached_version, version)
            elif feats.preds.shape == (len(rows), len(oracle.properties)) and \
                    feats.embeddings.shape == (len(rows), oracle.embedding_dim):
                return feats
            else:
                logger.warning("ignoring oracle reference cache %s with unexpected shapes", path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable oracle reference cache %s (%s)", path, exc)
    feats = oracle_features(oracle, [data.molecule(int(i)) for i in rows])
    buf = io.BytesIO()
    np.savez(buf, preds=feats.preds, embeddings=feats.embeddings, rows=rows, oracle_version=np.array(version))
    try:
        with atomic_open(path, "wb") as fh:
            fh.write(buf.getvalue())
    except MolgenError as exc:  # an unwritable cache must not fail the metrics
        logger.warning("%s", exc)
    return feats


def compare_features(samples: OracleFeatures, reference: OracleFeatures,
                     properties: Sequence[str]) -> dict[str, float]:
    """The ``embedding`` group's keys for two sets of oracle outputs (NaN rows left out and
    counted as ``oracle/unusable`` for the samples)."""
    keep = samples.usable()
    out: dict[str, float] = {"oracle/unusable": float((~keep).sum())}
    ref_keep = reference.usable()
    if not ref_keep.all():
        _warn(f"{int((~ref_keep).sum())} reference molecules have no usable coordinates; left out")
    X, Y = samples.embeddings[keep], reference.embeddings[ref_keep]
    if len(X) < 2 or len(Y) < 2:
        _warn(f"embedding metrics need at least 2 usable molecules per set (samples {len(X)}, "
              f"reference {len(Y)}); skipped")
        return out
    out["FD_emb"] = E.frechet_distance_features(X, Y)
    out["KID_emb"], out["KID_emb_std"] = E.kid(X, Y)
    out["MMD_emb"] = E.mmd_rbf(X, Y)
    out.update(E.kde_scores(X, Y))
    for j, prop in enumerate(properties):
        out[f"W1/{prop}"] = E.wasserstein1(samples.preds[keep, j], reference.preds[ref_keep, j])
    return out


def load_metrics_oracle():
    """The oracle of :func:`oracle_path`, or ``None`` after a one-line warning on stderr when its
    file is missing or unreadable (the ``embedding`` group is then skipped)."""
    from molgen.oracle import load_oracle

    path = oracle_path()
    if not path.is_file():
        _warn(f"oracle weights not found ({path}); embedding metrics skipped")
        return None
    try:
        return load_oracle(path)
    except MolgenError as exc:
        _warn(f"{exc}; embedding metrics skipped")
        return None


def embedding_metrics(samples: Sequence[Molecule3D | None], *, qm9_data=None,
                      reference_mols: Sequence[Molecule3D | None] | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      qm9_size: int = QM9_REFERENCE_SIZE, oracle=None) -> dict[str, float]:
    """The ``embedding`` group for 3D samples against QM9 (``qm9_data``) or 3D ``reference_mols``.

    ``oracle``: a loaded oracle (its ``version`` is what the caller reports with these values);
    default :func:`load_metrics_oracle`. Returns ``{}`` (after a one-line warning on stderr) when
    the oracle weights are missing or unreadable.
    """
    if oracle is None:
        oracle = load_metrics_oracle()
        if oracle is None:
            return {}
    if qm9_data is not None:
        reference = qm9_reference_features(oracle, None, qm9_data, size=qm9_size, cache_dir=cache_dir)
    elif reference_mols is not None:
        reference = oracle_features(oracle, reference_mols)
    else:
        raise ValueError("embedding_metrics needs qm9_data or reference_mols")
    return compare_features(oracle_features(oracle, samples), reference, oracle.properties)
