"""Fine-tuning options (kept free of torch imports, so the command line's parser builds fast)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class FineTuneOptions:
    """epochs: maximum epochs; an epoch is max(ceil(train slices / batch_size), min_steps_per_epoch)
    optimizer steps, so a handful of slices still gets a useful number of steps per epoch.
    box_margin / box_jitter: pixels added around a slice's mask box / random per-side change in
    [-box_jitter, box_jitter]. validation_fraction, min_slices_for_validation, patience: see
    MedSegAdaptLib.train.trainer."""

    epochs: int = 10
    batch_size: int = 2
    min_steps_per_epoch: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    train_prompt_encoder: bool = False
    box_margin: int = 3
    box_jitter: int = 3
    validation_fraction: float = 0.2
    min_slices_for_validation: int = 10
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "min_steps_per_epoch", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise InputError(f"learning rate must be positive, got {self.learning_rate}")
        if not 0 < self.validation_fraction < 1:
            raise InputError(f"validation fraction must be in (0, 1), got {self.validation_fraction}")
