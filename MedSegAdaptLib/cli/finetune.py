"""``medsegadapt finetune STORE -o CKPT``: fine-tune the mask decoder on a store's training view.

As elsewhere in the command line, the library is imported when the command runs, so that
``medsegadapt --help`` stays fast; bad input raises InputError (``error: ...``, exit status 2).

On several GPUs, launch `finetune` through torchrun, one process per GPU (see MedSegAdaptLib.training.distributed)::

    torchrun --standalone --nproc_per_node 4 -m MedSegAdaptLib.cli finetune STORE -o CKPT --cache-dir CACHE

Only the first process prints and writes the checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from MedSegAdaptLib.cli.model_options import add_model_options

if TYPE_CHECKING:
    import torch

__all__ = ["add_finetune_parser", "add_training_options", "fine_tune_from_args", "run_finetune"]


def add_finetune_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `finetune` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "finetune", help="fine-tune the mask decoder on a store's corrections",
        description="Fine-tune the model's mask decoder on the training view of a fine-tuning store (latest "
                    "corrections and accepted pseudo-labels; only annotated slices of partial annotations count), "
                    "with the image encoder frozen and slice embeddings cached. Writes a checkpoint after every "
                    "epoch (atomically); `segment --checkpoint CKPT` uses it, `--resume CKPT` continues it.")
    parser.add_argument("store", type=Path, help="fine-tuning store folder (made by `medsegadapt store init`)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint file to write (.pt)")
    add_model_options(parser, precision=False,
                      checkpoint_help="starting weights (a pretrained file or a fine-tuned checkpoint)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue an interrupted run from its checkpoint (same training set; keeps its "
                             "options except --epochs)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep slice embeddings on disk here (shared with `segment --cache-dir`)")
    add_training_options(parser)
    parser.set_defaults(func=run_finetune)
    return parser


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning hyper-parameters, shared by `finetune` and `adapt`."""
    from MedSegAdaptLib.training.options import FineTuneOptions

    defaults = FineTuneOptions()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="slices per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate,
                        help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--min-steps-per-epoch", type=int, default=defaults.min_steps_per_epoch,
                        help="optimizer steps per epoch at least, for small sets (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help="epochs without validation improvement before stopping (default: %(default)s)")
    parser.add_argument("--train-prompt-encoder", action="store_true", help="also train the prompt encoder")
    parser.add_argument("--priors", default="",
                        help="MedSeg-R priors to train: 'all' or some of location,texture,shape,semantic "
                             "(comma-separated); the texts come from the knowledge base's description of each "
                             "structure (default: none, the mask decoder alone)")
    parser.add_argument("--text-encoder", type=Path, default=None,
                        help="with --priors: folder of a local CLIP text encoder (transformers format: config.json, "
                             "weights, tokenizer files) for the priors' texts; the checkpoint records it and `segment` "
                             "loads it again (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--freeze-decoder", action="store_true", help="with --priors, train only the priors")
    parser.add_argument("--prompt", default=defaults.prompt, choices=("box", "none", "mixed"),
                        help="training prompts: box, none (for prompt-free segmentation) or mixed, half each "
                             "(default: %(default)s)")
    parser.add_argument("--semi-supervised", action="store_true",
                        help="after training on the annotated slices, pseudo-label the unannotated slices of partial "
                             "annotations, keep the confident ones close to annotated slices and train --epochs more "
                             "on both (the selection is printed and kept in the checkpoint)")
    parser.add_argument("--confidence-percentile", type=float, default=defaults.confidence_percentile,
                        help="with --semi-supervised: keep pseudo-labels whose confidence is at least this "
                             "percentile of all candidates' (default: %(default)s)")
    parser.add_argument("--distance-percentile", type=float, default=defaults.distance_percentile,
                        help="with --semi-supervised: keep pseudo-labels whose embedding distance to the nearest "
                             "annotated slice is at most this percentile of all candidates' (default: %(default)s)")
    parser.add_argument("--synthetic-share", type=_share, default=defaults.synthetic_share,
                        help="with synthetic (MedSeg-Adapt) labels beside corrections: their share of each epoch's "
                             "slices, real slices alone validating; 'proportional' draws every slice alike "
                             "(default: %(default)s)")
    parser.add_argument("--extent-box-share", type=float, default=defaults.extent_box_share,
                        help="share of training prompts that are the box of the label's whole extent, as a 3D box "
                             "prompts the start slice (default: %(default)s)")
    parser.add_argument("--neighbour-box-share", type=float, default=defaults.neighbour_box_share,
                        help="share of training prompts that are an annotated neighbouring slice's mask box, as "
                             "propagation prompts the next slice (default: %(default)s)")
    parser.add_argument("--lesion-background-share", type=float, default=defaults.lesion_background_share,
                        help="share of a lesion's training slices prompted with a box beside the lesion, target "
                             "empty, so that chains stop past its end (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")


def _share(text: str) -> float | None:
    """--synthetic-share's value: a number, or 'proportional' for None."""
    if text.strip().lower() == "proportional":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or 'proportional', got {text!r}") from None




def run_finetune(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt finetune` (data-parallel over torchrun's processes when it started several)."""
    from MedSegAdaptLib.models.device import resolve_device
    from MedSegAdaptLib.store import FineTuningStore
    from MedSegAdaptLib.training.distributed import process_group

    with process_group(resolve_device(args.device)) as device, FineTuningStore(args.store) as store:
        fine_tune_from_args(args, store, device)
    return 0


def fine_tune_from_args(args: argparse.Namespace, store, device: torch.device | None = None) -> None:
    """Fine-tune on `store`'s training view with the model and training options of `args`, printing
    each epoch and the result (only on rank 0 of a process group); device: default from args.device."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.inference import EmbeddingCache
    from MedSegAdaptLib.models.device import resolve_device
    from MedSegAdaptLib.training.distributed import world
    from MedSegAdaptLib.training.options import FineTuneOptions, parse_priors
    from MedSegAdaptLib.training.trainer import fine_tune

    options = FineTuneOptions(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                              min_steps_per_epoch=args.min_steps_per_epoch, patience=args.patience,
                              train_prompt_encoder=args.train_prompt_encoder, seed=args.seed,
                              priors=parse_priors(args.priors), text_encoder=args.text_encoder,
                              train_decoder=not args.freeze_decoder,
                              prompt=args.prompt, semi_supervised=args.semi_supervised,
                              confidence_percentile=args.confidence_percentile,
                              distance_percentile=args.distance_percentile, synthetic_share=args.synthetic_share,
                              extent_box_share=args.extent_box_share, neighbour_box_share=args.neighbour_box_share,
                              lesion_background_share=args.lesion_background_share)
    device = resolve_device(args.device) if device is None else device
    main = world().main
    progress = TerminalProgress() if main else None

    def on_epoch(record: dict) -> None:
        progress.close()
        val = "-" if record["val_dice"] is None else f"{record['val_dice']:.3f}"
        print(f"epoch {record['epoch']:3d} {record['stage']:>15}  loss {record['train_loss']:.4f}  val Dice {val}  "
              f"{record['seconds']:.1f} s  (best epoch {record['best_epoch']})", flush=True)

    try:
        result = fine_tune(store, args.output, backbone=args.backbone, checkpoint=args.checkpoint,
                           device=device, options=options, resume=getattr(args, "resume", None),
                           cache=EmbeddingCache(args.cache_dir), encoder_runtime=args.encoder_runtime,
                           progress=progress, on_epoch=on_epoch if main else None)
    finally:
        if progress is not None:
            progress.close()
    if not main:
        return
    synthetic = f" ({result.synthetic_slices} synthetic)" if result.synthetic_slices else ""
    print(f"training set {result.training_set_version}: {', '.join(result.structures)}; "
          f"{result.train_slices} training{synthetic} / {result.val_slices} validation slices, "
          f"{result.slices_encoded} slices encoded, on {device}")
    if result.pseudo_labels is not None:
        print(result.pseudo_labels.summary())
    best = "" if result.best_val_dice is None else f", validation Dice {result.best_val_dice:.3f}"
    stop = " (stopped early)" if result.stopped_early else ""
    print(f"best epoch {result.best_epoch} of {result.epochs_run}{best}{stop}; wrote {result.checkpoint}")
