"""Choice of torch device from the user's --device value."""
from __future__ import annotations

import torch

from MedSegAdaptLib.core.choices import DEVICE_CHOICES
from MedSegAdaptLib.core.errors import InputError

__all__ = ["DEVICE_CHOICES", "resolve_device"]


def resolve_device(choice: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise InputError(f"unknown device {choice!r}; expected one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {choice!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(choice)
