"""Which device and dtype the model runs on: ``IMGEDIT_DEVICE`` and ``IMGEDIT_DTYPE``, resolved for this machine."""

from __future__ import annotations

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class DeviceError(Exception):
    """The device asked for is not here; the message is one line naming the variable."""


def pick_device(setting: str, slot: int = 0) -> torch.device:
    """The device ``IMGEDIT_DEVICE`` asks for; with several GPUs, slot ``slot`` (a worker or a rank) gets its own.

    Raises:
        DeviceError: CUDA was asked for and there is none.
    """
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceError("IMGEDIT_DEVICE: 'cuda' was asked for, but no CUDA device is available")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", slot % torch.cuda.device_count())


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The dtype ``IMGEDIT_DTYPE`` asks for: ``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
