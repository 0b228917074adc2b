"""Convert a checkpoint or oracle file YOU TRUST into molgen's safe format (tensors + plain data + digest).

molgen loads ``.pt`` files with ``torch.load(weights_only=True)`` (:mod:`molgen.safe_load`), which
refuses files that hold Python objects (they could run code when unpickled). A file written by an
old or foreign tool that holds, e.g., numpy arrays or dataclasses is refused with a pointer here.
This script unpickles it **with code execution allowed** — run it only on files whose origin you
trust — turns every value into tensors and plain data, adds the weights' integrity digest and
writes the result atomically:

    python scripts/convert_checkpoint.py IN.pt OUT.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from molgen.checkpoint import FORMAT, FORMAT_VERSION, WEIGHT_KEYS  # noqa: E402
from molgen.io_utils import atomic_torch_save  # noqa: E402
from molgen.safe_load import safe_torch_load, with_integrity  # noqa: E402


def plain(value):
    """Tensors, dicts, lists, strings, numbers, bools and None; anything else becomes one of those."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    raise SystemExit(f"error: cannot convert a value of type {type(value).__name__} to plain data")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    payload = torch.load(args.src, map_location="cpu", weights_only=False)  # trusted by the user
    if not isinstance(payload, dict):
        print(f"error: {args.src} does not hold a dict", file=sys.stderr)
        return 2
    payload = plain(payload)
    keys = WEIGHT_KEYS if payload.get("format") == FORMAT else ("model",)
    if payload.get("format") == FORMAT:
        payload["format_version"] = FORMAT_VERSION
    payload.pop("integrity", None)
    atomic_torch_save(with_integrity(payload, keys), args.dst)
    safe_torch_load(args.dst, "converted file")  # it must now load the safe way
    print(f"wrote {args.dst} (integrity sha256 over {', '.join(k for k in keys if k in payload)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
