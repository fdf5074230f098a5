"""Fine-tuned checkpoints: one torch.save'd dict, written atomically, loadable by load_backbone.

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

from ..errors import InputError
from ..io import atomic_output
from ..models.loading import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_torch_file

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "make_checkpoint", "save_checkpoint"]


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
