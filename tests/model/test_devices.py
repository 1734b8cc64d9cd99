from __future__ import annotations

import pytest
import torch

from imgedit.model.devices import DeviceError, pick_device, pick_dtype


def test_device_and_dtype_defaults():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert pick_dtype("auto", torch.device("cpu")) is torch.float32
    assert pick_dtype("float16", torch.device("cpu")) is torch.float16


def test_each_worker_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [pick_device("auto", worker) for worker in range(5)] == [
        torch.device("cuda", index) for index in (0, 1, 2, 3, 0)
    ]
    assert pick_device("cpu", 2) == torch.device("cpu")


def test_cuda_without_one_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^IMGEDIT_DEVICE: 'cuda' was asked for"):
        pick_device("cuda")
