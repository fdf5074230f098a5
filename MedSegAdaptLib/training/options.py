"""Fine-tuning options (kept free of torch imports, so the command line's parser builds fast)."""
from __future__ import annotations

from dataclasses import dataclass

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.knowledge.knowledge_base import PRIORS

__all__ = ["PROMPTS", "FineTuneOptions", "parse_priors"]

PROMPTS = ("box", "none", "mixed")


@dataclass(frozen=True)
class FineTuneOptions:
    """epochs: maximum epochs; an epoch is max(ceil(train slices / batch_size), min_steps_per_epoch)
    optimizer steps, so a handful of slices still gets a useful number of steps per epoch.
    box_margin / box_jitter: pixels added around a slice's mask box / random per-side change in
    [-box_jitter, box_jitter]. extent_box_share: the share of training prompts that are instead the box of
    the label's whole extent over its annotated slices (+ margin and jitter), the box a 3D box prompt
    gives the start slice of propagation, however small the structure is on that slice;
    neighbour_box_share: the share that are instead the mask box of an annotated neighbouring slice
    (k - 1 or k + 1), the box propagation carries onto the slice, too small where the structure grows
    (0 and 0: every slice its own mask box). The defaults 0.3 and 0.3 won over own boxes only in the
    rounds benchmark (mean +0.035 Dice over 8 targets x 2 rounds x 2 seeds; brain1 +0.22, breast1
    -0.03; docs/store-and-loop.md): a model trained on tight boxes alone mis-segments the start slice's
    wide box and the propagation chain dies. validation_fraction, min_slices_for_validation, patience: see
    MedSegAdaptLib.training.trainer.
    priors: MedSeg-R priors to train (a subset of location, texture, shape, semantic; empty: none).
    text_encoder: folder of a local CLIP text encoder (transformers format) that encodes the priors'
    texts; None: the packaged all-MiniLM-L6-v2 (or, continuing a MedSeg-R checkpoint, the encoder it
    was trained with).
    train_decoder: whether the mask decoder learns too. prompt: what each training slice is prompted
    with: 'box', 'none' (prompt-free segmentation) or 'mixed' (box or none, half each).
    semi_supervised: after `epochs` epochs on the annotated slices, pseudo-label the unannotated slices
    of partial annotations, keep the confident ones close to annotated slices (at least the
    confidence_percentile-th percentile of the candidates' confidence, at most the
    distance_percentile-th percentile of their embedding distance) and train `epochs` more epochs on
    both; see MedSegAdaptLib.training.pseudo_labels.
    synthetic_share: when the training view holds both real and synthetic (MedSeg-Adapt) labels, the
    share of each epoch's slices drawn from synthetic ones; an epoch is then one pass over the real
    slices plus that many synthetic draws, and only real slices are held out for validation. None:
    every slice once per epoch, in proportion (synthetic slices then outnumber a few corrections by
    hundreds to one, see docs/environments.md).
    lesion_background_share: the share of a lesion's training slices prompted instead with their box moved
    beside the lesion onto tissue without it, target empty (cross-entropy only), so that the decoder
    keeps answering "nothing here" past a lesion's end (see trainer.beside_structure)."""

    epochs: int = 10
    batch_size: int = 2
    min_steps_per_epoch: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    train_prompt_encoder: bool = False
    box_margin: int = 3
    box_jitter: int = 3
    extent_box_share: float = 0.3
    neighbour_box_share: float = 0.3
    validation_fraction: float = 0.2
    min_slices_for_validation: int = 10
    patience: int = 3
    seed: int = 0
    priors: tuple[str, ...] = ()
    text_encoder: str | None = None
    train_decoder: bool = True
    prompt: str = "box"
    semi_supervised: bool = False
    confidence_percentile: float = 50.0
    distance_percentile: float = 50.0
    synthetic_share: float | None = 0.5
    lesion_background_share: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "priors", tuple(self.priors))
        if self.text_encoder is not None:  # a plain string, so that checkpoints can keep it
            object.__setattr__(self, "text_encoder", str(self.text_encoder))
        unknown = sorted(set(self.priors) - set(PRIORS))
        if unknown:
            raise InputError(f"unknown priors {', '.join(unknown)}; expected some of {', '.join(PRIORS)}")
        if self.prompt not in PROMPTS:
            raise InputError(f"prompt {self.prompt!r}: expected one of {', '.join(PROMPTS)}")
        shares = {"extent box share": self.extent_box_share, "neighbour box share": self.neighbour_box_share}
        for name, share in shares.items():
            if not 0 <= share <= 1:
                raise InputError(f"{name} {share!r} is not a share of the training prompts; expected 0 to 1")
        if sum(shares.values()) > 1:
            raise InputError(f"extent and neighbour box shares add up to {sum(shares.values())!r}; expected at most 1")
        if not self.priors and not self.train_decoder:
            raise InputError("nothing to train: give priors, or let the mask decoder train")
        for name in ("epochs", "batch_size", "min_steps_per_epoch", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise InputError(f"learning rate must be positive, got {self.learning_rate}")
        for name in ("confidence_percentile", "distance_percentile"):
            if not 0 <= getattr(self, name) <= 100:
                raise InputError(f"{name.replace('_', ' ')} must be in [0, 100], got {getattr(self, name)}")
        if self.synthetic_share is not None and not 0 < self.synthetic_share < 1:
            raise InputError(f"synthetic share must be in (0, 1), got {self.synthetic_share}")
        if not 0 <= self.lesion_background_share < 1:
            raise InputError(f"lesion background share must be in [0, 1), got {self.lesion_background_share}")
        if not 0 < self.validation_fraction < 1:
            raise InputError(f"validation fraction must be in (0, 1), got {self.validation_fraction}")

def parse_priors(text: str) -> tuple[str, ...]:
    """'all', '' or a comma-separated subset of the priors -> the tuple of prior names."""
    text = text.strip().lower()
    if text == "all":
        return PRIORS
    return tuple(name.strip() for name in text.split(",") if name.strip())
