"""Checkpoint files: the MedSegAdapt fine-tuned format, its writer and its readers (which also read
plain pretrained weight files for load_backbone).

A fine-tuned checkpoint is one torch.save'd dict, written atomically.

Keys:

- ``format`` ("medsegadapt-checkpoint"), ``version`` (1);
- ``backbone`` (litemedsam, medsam, sam_vit_b) and ``backbone_weights_sha256``: the pretrained
  weights the model descends from (kept through repeated fine-tuning); load_backbone refuses the
  checkpoint for another backbone, and fine-tuning refuses to resume it on other weights;
- ``training_set_version`` of the store's training view it was trained on, ``structures``;
- ``metrics``: best_epoch, best_val_dice (None without validation), history (per epoch: train_loss,
  val_dice, seconds), train_slices, val_slices, options;
- ``priors``: for MedSeg-R checkpoints, the priors used (``use``), the text encoder they were trained
  with (``text_encoder``: name@weights SHA-256 prefix, ``text_encoder_kind``: minilm or clip,
  ``text_dim``: its token width, ``text_encoder_path``: a CLIP encoder's folder) and the knowledge-base
  version (load_backbone re-attaches the priors, PriorGuidance.for_backbone the text encoder); else None;
- ``model``: the full backbone state dict (unfused) of the best epoch so far, what `segment
  --checkpoint` uses;
- ``optimizer``, ``epoch`` (epochs completed), ``last_trainable`` (the trainable parts' state after
  that epoch, which may differ from the best one) and ``stopping`` (early-stopping counters): what
  ``--resume`` continues from.
"""
from __future__ import annotations

from pathlib import Path

import torch

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io import atomic_output

__all__ = [
    "BACKBONES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "check_checkpoint_metadata",
    "load_checkpoint",
    "load_torch_file",
    "make_checkpoint",
    "read_checkpoint",
    "read_state_dict",
    "save_checkpoint",
]

BACKBONES = ("litemedsam", "medsam", "sam_vit_b")
"""The model families a checkpoint can come from."""

CHECKPOINT_FORMAT = "medsegadapt-checkpoint"
CHECKPOINT_VERSION = 1


def make_checkpoint(*, backbone: str, backbone_weights_sha256: str, training_set_version: str,
                    structures: list[str], metrics: dict, model: dict, optimizer: dict, epoch: int,
                    last_trainable: dict | None = None, stopping: dict | None = None,
                    priors: dict | None = None) -> dict:
    """The checkpoint dict (see the module docstring)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": backbone,
        "backbone_weights_sha256": backbone_weights_sha256,
        "training_set_version": training_set_version,
        "structures": list(structures),
        "metrics": metrics,
        "model": model,
        "optimizer": optimizer,
        "epoch": epoch,
        "last_trainable": last_trainable,
        "stopping": stopping or {},
        "priors": priors,
    }


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """torch.save the checkpoint atomically: `path` is the old file or the complete new one."""
    with atomic_output(path) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path: str | Path) -> dict:
    """A MedSegAdapt checkpoint dict from `path` (tensors on the CPU); InputError for anything else."""
    path = Path(path)
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint {path} is not a MedSegAdapt fine-tuning checkpoint (no format "
                         f"{CHECKPOINT_FORMAT!r}); --resume needs a file written by `medsegadapt finetune`")
    version = checkpoint.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(f"checkpoint {path} has {CHECKPOINT_FORMAT} version {version!r}; this MedSegAdapt "
                         f"reads versions up to {CHECKPOINT_VERSION}")
    return checkpoint

def load_torch_file(path: Path) -> object:
    """torch.load a checkpoint file onto the CPU (tensors and plain data only); InputError when it
    is missing or not a readable PyTorch file."""
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise InputError(f"checkpoint {path} could not be read as a PyTorch checkpoint "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error

def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(model state dict, the whole checkpoint dict when it is a MedSegAdapt fine-tuned checkpoint, else None)."""
    checkpoint = load_torch_file(path)
    metadata = checkpoint if isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT else None
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise InputError(f"checkpoint {path} holds no model state dict (expected a mapping of tensors)")
    return checkpoint, metadata

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict stored in a checkpoint file (plain, or under 'model' / 'state_dict')."""
    return read_checkpoint(path)[0]

def check_checkpoint_metadata(metadata: dict, path: Path, backbone: str, detected: str,
                              base_weights_sha256: str | None = None) -> str:
    """The backbone a fine-tuned checkpoint was made from, after checking it against the request.

    backbone: the requested backbone ('auto' or one of BACKBONES); detected: the family its keys
    show; base_weights_sha256: when given, the SHA-256 of the pretrained weights the checkpoint
    must descend from. Raises InputError naming what mismatched.
    """
    version = metadata.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(f"checkpoint {path} has {CHECKPOINT_FORMAT} version {version!r}; this MedSegAdapt "
                         f"reads versions up to {CHECKPOINT_VERSION} (a newer MedSegAdapt wrote it)")
    made_from, made_sha = metadata.get("backbone"), metadata.get("backbone_weights_sha256")
    if made_from not in BACKBONES:
        raise InputError(f"checkpoint {path} names backbone {made_from!r}; expected one of {', '.join(BACKBONES)}")
    if (made_from == "litemedsam") != (detected == "litemedsam"):
        raise InputError(f"checkpoint {path} says it was fine-tuned from {made_from} but holds {detected} weights")
    if backbone != "auto" and backbone != made_from:
        raise InputError(f"checkpoint {path} was fine-tuned from backbone {made_from} (weights SHA-256 "
                         f"{str(made_sha)[:12]}...), not {backbone}; use --backbone {made_from} or auto")
    if base_weights_sha256 is not None and made_sha != base_weights_sha256:
        raise InputError(f"checkpoint {path} was fine-tuned from {made_from} weights with SHA-256 "
                         f"{str(made_sha)[:12]}..., but the backbone weights here have SHA-256 "
                         f"{base_weights_sha256[:12]}...; use the checkpoint with the weights it was made from")
    return made_from
