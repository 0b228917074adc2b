"""What machine produced a figure: the CPU's model name, or the GPU's, for reports and scripts."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """A human-readable CPU name: ``platform.processor()``, else ``/proc/cpuinfo``'s model name."""
    name = platform.processor()
    if not name or name == platform.machine():
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return name or "unknown CPU"


def describe_machine() -> str:
    """``"<GPU name>"`` when CUDA is available, else ``"<N> CPUs, <CPU name>, torch threads <T>"``."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPUs, {cpu_name()}, {torch.get_num_threads()} torch threads"
