"""``--device`` resolution, with CUDA mocked (CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from molgen.distributed import resolve_device
from molgen.errors import MolgenError


@pytest.mark.parametrize(
    ("pref", "rank", "distributed", "cuda", "expected"),
    [
        ("auto", 0, False, False, "cpu"),
        ("auto", 1, True, True, "cuda:1"),
        ("cpu", 0, False, True, "cpu"),
        ("cuda", 0, False, True, "cuda:0"),  # torch.cuda.set_device refuses an index-less device
        ("cuda", 3, True, True, "cuda:3"),  # torchrun: each rank its local GPU
        ("cuda:1", 0, False, True, "cuda:1"),
        ("cuda:1", 2, True, True, "cuda:2"),
    ],
)
def test_device_resolution(pref, rank, distributed, cuda, expected) -> None:
    device = resolve_device(pref, rank, distributed=distributed, cuda_available=cuda)
    assert device == torch.device(expected) and (device.type != "cuda" or device.index is not None)


@pytest.mark.parametrize(("pref", "fragment"), [("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available"),
                                                ("tpu9", "unknown device 'tpu9'")])
def test_bad_devices_are_one_line_errors(pref, fragment) -> None:
    with pytest.raises(MolgenError, match=fragment):
        resolve_device(pref, cuda_available=False)


def test_setup_passes_an_indexed_device_to_cuda(monkeypatch) -> None:
    """``--device cuda`` on a (mocked) GPU machine: ``set_device`` gets ``cuda:LOCAL_RANK``."""
    from molgen import distributed

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(torch.device(d)))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = distributed.setup("cuda")
    assert device == torch.device("cuda:0") and seen == [torch.device("cuda:0")] and not info.enabled
