"""Fine-tuning of the mask decoder on a store's annotated slices, over cached embeddings.

The image encoder is frozen: every annotated slice is encoded once (through the inference-optimised
encoder, into an EmbeddingCache) and training runs only the prompt encoder and mask decoder. By
default only the mask decoder learns; the prompt encoder can be unfrozen.

Each sample is an annotated slice prompted with its mask's bounding box grown by the propagation
margin (PropagationOptions.margin, 3 pixels) and jittered by up to `box_jitter` pixels per side, as
volumetric inference prompts each slice with the previous slice's mask box plus that margin.
With `lesion_background_share` (off by default), that share of a lesion's slices is prompted instead
with its box moved beside the lesion, target empty (beside_structure): the box propagation carries
past a lesion's end, where the answer is nothing (docs/store-and-loop.md, "Boxes beside a lesion").
Flips are left out on purpose: the embedding of a flipped image is not the flipped embedding (the
encoder is not flip-equivariant), so flipping cached embeddings would teach the decoder on
features it never sees; a flip augmentation needs the image re-encoded, which the frozen-encoder
design avoids.

Loss: MONAI's DiceCELoss(sigmoid=True) per slice on the slice grid (the decoder's 256x256 logits
cropped and resized as at inference), averaged over the batch; a negative slice (empty target, only
in prompt-free or mixed training, see MedSegAdaptLib.training.dataset) gets its cross-entropy part alone,
since Dice is undefined without foreground and its smoothed form drives every pixel to zero. Only annotated slices exist in the
dataset, so unannotated voxels of partial annotations never enter the loss.
Optimiser: AdamW (betas 0.9/0.999, weight decay 0.1). With enough labeled slices
(`min_slices_for_validation`), every `1/validation_fraction`-th one is held out; the mean Dice on
them (box without jitter) is measured after each epoch, the best epoch's weights are kept and
training stops after `patience` epochs without improvement. With fewer slices all of them train,
for the set number of epochs, and the last epoch is kept.

Real and synthetic labels (`options.synthetic_share`, 0.5 by default): when the training view holds
MedSeg-Adapt's synthetic labels beside real corrections, an epoch is one pass over the real slices
plus as many synthetic draws as the share asks, and only real slices are held out for validation.
In proportion, 20 generated volumes labeled on every slice outnumbered 9 corrected slices by about
a hundred to one, and validation chose the epoch that best matched the synthetic labels.

A checkpoint is written atomically after every epoch, so an interrupted run resumes (`resume=`).

Several GPUs (or processes): launched by torchrun inside MedSegAdaptLib.training.distributed.process_group
(as `medsegadapt finetune` does), the ranks share each epoch's batches and average their gradients;
see MedSegAdaptLib.training.distributed. One process trains as described above.

Selective semi-supervision (`options.semi_supervised`): the run above is stage one; its best model
then pseudo-labels the unannotated slices of partial annotations, the confident pseudo-labels close
to annotated slices are added to the training slices (never to validation), and stage two trains
`epochs` more epochs from stage one's best weights, with the same validation and early stopping (so
stage one's weights stay the best when pseudo-labels do not improve validation). The selection is
reported in the checkpoint's metrics ("pseudo_labels"); see MedSegAdaptLib.training.pseudo_labels.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.hashing import sha256_file
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference.embedding_cache import EmbeddingCache
from MedSegAdaptLib.inference.preprocess import logits_to_slice
from MedSegAdaptLib.inference.propagation import prompt_rect
from MedSegAdaptLib.inference.report_guidance import PriorGuidance
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.backbone import SamBackbone
from MedSegAdaptLib.models.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from MedSegAdaptLib.models.conv_bn_fusion import optimize_encoder_for_inference
from MedSegAdaptLib.priors.modules import AttributeTokens, attach_priors
from MedSegAdaptLib.store.store import FineTuningStore
from MedSegAdaptLib.training import distributed
from MedSegAdaptLib.training.dataset import SliceDataset, TrainingSlice
from MedSegAdaptLib.training.options import FineTuneOptions
from MedSegAdaptLib.training.pseudo_labels import (
    SelectionReport,
    pseudo_label_volume,
    select_pseudo_labels,
)


@dataclass
class FineTuneResult:
    """What a fine-tuning run did: the checkpoint, its metrics and the per-epoch history."""

    checkpoint: Path
    training_set_version: str
    structures: list[str]
    train_slices: int
    val_slices: int
    epochs_run: int
    best_epoch: int
    best_val_dice: float | None
    history: list[dict] = field(default_factory=list)
    slices_encoded: int = 0
    stopped_early: bool = False
    pseudo_labels: SelectionReport | None = None
    synthetic_slices: int = 0  # of train_slices, those of synthetic labels


def split_validation(synthetic: list[bool], options: FineTuneOptions) -> tuple[list[int], list[int]]:
    """(train, validation) indices of a dataset's slices, `synthetic` flagging each: every
    round(1/fraction)-th slice held out when there are enough. With a synthetic share, only real slices
    are counted and held out (synthetic ones always train): the model is chosen on real data."""
    count = len(synthetic)
    eligible = [i for i in range(count) if options.synthetic_share is None or not synthetic[i]]
    if len(eligible) < options.min_slices_for_validation:
        return list(range(count)), []
    every = max(2, round(1 / options.validation_fraction))
    held = {index for number, index in enumerate(eligible) if number % every == every // 2}
    return [i for i in range(count) if i not in held], sorted(held)


def epoch_order(train_index: list[int], synthetic: list[bool], share: float | None,
                rng: np.random.Generator) -> np.ndarray:
    """One epoch's pass over the training slices (indices into the dataset), shuffled: with a synthetic
    `share` and both kinds present, every real slice once plus round(real * share / (1 - share)) synthetic
    slices, at least one, drawn without repeats (cycling when there are fewer); otherwise every slice once."""
    real = [i for i in train_index if not synthetic[i]]
    generated = [i for i in train_index if synthetic[i]]
    if share is None or not real or not generated:
        return rng.permutation(train_index)
    wanted = max(1, round(len(real) * share / (1 - share)))  # one corrected slice at share 0.25 rounds to 0
    drawn = np.concatenate([rng.permutation(generated) for _ in range(math.ceil(wanted / len(generated)))])[:wanted]
    return rng.permutation(np.concatenate([np.asarray(real), drawn]).astype(int))


def prompt_boxes(items: list[TrainingSlice], margin: int, jitter: int, rng: np.random.Generator | None,
                 extent_share: float = 0.0, neighbour_share: float = 0.0) -> torch.Tensor:
    """(B, 4) boxes in encoder-input pixels: each slice's mask box + margin (+ a random per-side change
    of up to `jitter` pixels with an rng), clipped to the slice, as propagation prompts a slice. With an
    rng, a slice takes instead, with probability `extent_share`, its extent_rect (as a 3D box prompts
    the start slice of propagation) and with probability `neighbour_share` one of its neighbour_rects
    (as propagation from the next slice prompts it), where it has them."""
    boxes = []
    for item in items:
        rect = item.rect
        if rng is not None and extent_share + neighbour_share > 0:
            draw = rng.random()
            if draw < extent_share and item.extent_rect is not None:
                rect = item.extent_rect
            elif extent_share <= draw < extent_share + neighbour_share and item.neighbour_rects:
                rect = item.neighbour_rects[int(rng.integers(len(item.neighbour_rects)))]
        grow = np.full(4, margin, np.float32)
        if rng is not None and jitter > 0:
            grow += rng.integers(-jitter, jitter + 1, size=4)
        height, width = item.mask.shape
        boxes.append(prompt_rect(rect, grow, np.array([0, 0, width - 1, height - 1], np.float32)) * item.scale)
    return torch.from_numpy(np.stack(boxes).astype(np.float32))


def beside_structure(item: TrainingSlice, grow: int, rng: np.random.Generator) -> TrainingSlice | None:
    """A negative copy of a positive slice: its prompt rect moved by its own size (+ 2 * grow + 1 pixels)
    to one of the 8 neighbouring positions, drawn among those inside the slice whose rect grown by `grow`
    holds no foreground, with an empty target (None when no position is free). It is the box
    propagation carries past a lesion's end onto tissue beside it, where the answer is nothing."""
    x0, y0, x1, y1 = (int(v) for v in item.rect)
    height, width = item.mask.shape
    step_x, step_y = x1 - x0 + 1 + 2 * grow + 1, y1 - y0 + 1 + 2 * grow + 1
    free = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ax0, ay0, ax1, ay1 = x0 + dx * step_x, y0 + dy * step_y, x1 + dx * step_x, y1 + dy * step_y
            if (dx, dy) == (0, 0) or ax0 - grow < 0 or ay0 - grow < 0 or ax1 + grow >= width or ay1 + grow >= height:
                continue
            if not item.mask[ay0 - grow:ay1 + grow + 1, ax0 - grow:ax1 + grow + 1].any():
                free.append(np.array([ax0, ay0, ax1, ay1], item.rect.dtype))
    if not free:
        return None
    return dataclasses.replace(item, mask=np.zeros_like(item.mask), rect=free[int(rng.integers(len(free)))],
                               extent_rect=None, neighbour_rects=())


def slice_logits(model: SamBackbone, embeddings: torch.Tensor, boxes: list[torch.Tensor | None],
                 items: list[TrainingSlice], tokens: Mapping[str, AttributeTokens] | None = None) -> list[torch.Tensor]:
    """(H, W) logits on each slice's grid; boxes: per slice a (4,) box or None (prompt-free);
    tokens: structure -> MedSeg-R attribute tokens (for a model with priors). One decode per slice:
    segment-anything's MaskDecoder repeats the image embedding per prompt, so it cannot pair B
    embeddings with B boxes."""
    size = model.spec.image_size
    out = []
    for embedding, box, item in zip(embeddings, boxes, items):
        logits, _ = model.decode(embedding[None], boxes=None if box is None else box[None],
                                 prior_tokens=None if tokens is None else tokens[item.structure])
        out.append(logits_to_slice(logits, *item.mask.shape, size)[0])
    return out


def batch_loss(model: SamBackbone, loss_fn: DiceCELoss, embeddings: torch.Tensor,
               boxes: list[torch.Tensor | None], items: list[TrainingSlice],
               tokens: Mapping[str, AttributeTokens] | None = None) -> torch.Tensor:
    """Mean DiceCE loss over the slices of a batch (cross-entropy alone for an empty target); embeddings
    (B, 256, 64, 64), boxes B of (4,) or None."""
    device = embeddings.device
    losses = []
    for logits, item in zip(slice_logits(model, embeddings, boxes, items, tokens), items):
        target = torch.from_numpy(item.mask).to(device, torch.float32)[None, None]
        losses.append(loss_fn(logits[None, None], target) if item.mask.any() else loss_fn.bce(logits[None, None], target))
    return torch.stack(losses).mean()


def choose_prompts(boxes: torch.Tensor, prompt: str, rng: np.random.Generator | None) -> list[torch.Tensor | None]:
    """Per slice its box, or None (prompt-free): all boxes for 'box', none for 'none', and for
    'mixed' each slice's box kept with probability 1/2 (always kept without an rng)."""
    if prompt == "none":
        return [None] * len(boxes)
    if prompt == "mixed" and rng is not None:
        return [box if keep else None for box, keep in zip(boxes, rng.random(len(boxes)) < 0.5)]
    return list(boxes)




def _trainable_prefixes(options: FineTuneOptions) -> tuple[str, ...]:
    return (("mask_decoder.",) * options.train_decoder + ("prompt_encoder.",) * options.train_prompt_encoder
            + ("priors.",) * bool(options.priors))


def _trainable_state(model: SamBackbone, options: FineTuneOptions) -> dict[str, torch.Tensor]:
    prefixes = _trainable_prefixes(options)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k.startswith(prefixes)}


def _base_weights_sha256(path: Path | None) -> str | None:
    """SHA-256 of the pretrained weights a weight file descends from (its own, or a checkpoint's record)."""
    if path is None:
        return None
    metadata = read_checkpoint(Path(path))[1]
    return metadata["backbone_weights_sha256"] if metadata is not None else sha256_file(Path(path))


@dataclass
class _TrainingState:
    """Where a run stands: history, best epoch and weights, early-stopping counters."""

    best_state: dict[str, torch.Tensor]
    encoded: int
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_epoch: int = 0
    best_dice: float | None = None
    stale: int = 0
    stopped: bool = False

    def restore(self, checkpoint: dict, prefixes: tuple[str, ...]) -> None:
        """Continue from an interrupted run's checkpoint."""
        metrics, stopping = checkpoint["metrics"], checkpoint.get("stopping", {})
        self.start_epoch = int(checkpoint["epoch"])
        self.history = list(metrics.get("history", []))
        self.best_epoch, self.best_dice = metrics.get("best_epoch", 0), metrics.get("best_val_dice")
        self.stale, self.stopped = int(stopping.get("stale_epochs", 0)), bool(stopping.get("stopped_early", False))
        self.best_state = {k: v for k, v in checkpoint["model"].items() if k.startswith(prefixes)}


class FineTuner:
    """One fine-tuning run of a store's training view; see the module docstring.

    backbone / checkpoint: the starting model as for load_backbone (a fine-tuned checkpoint is a valid
    start). resume: a checkpoint of an interrupted run of the same training set to continue; it keeps
    that run's options except `epochs`, and must descend from `checkpoint`'s weights when both are
    given. cache: embedding cache (a folder keeps embeddings across runs).
    """

    def __init__(self, store: FineTuningStore, output: str | Path, backbone: str = "auto",
                 checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                 options: FineTuneOptions = FineTuneOptions(), resume: str | Path | None = None,
                 cache: EmbeddingCache | None = None, encoder_runtime: str = "auto") -> None:
        self.output = Path(output)
        if not self.output.parent.is_dir():
            raise InputError(f"cannot write checkpoint {self.output}: folder {self.output.parent} does not exist")
        self.device = torch.device(device)
        self.rows = store.training_view()
        self.training_set_version = store.training_set_version()
        self.resumed: dict | None = None
        if resume is not None:
            self.resumed = load_checkpoint(resume)
            if self.resumed["training_set_version"] != self.training_set_version:
                raise InputError(
                    f"checkpoint {resume} was trained on training set version {self.resumed['training_set_version']}, "
                    f"but {store.root} is now at {self.training_set_version}; resume only continues an interrupted "
                    "run on the same training set (start a new run with --checkpoint instead)")
            saved = dict(self.resumed["metrics"].get("options", {}))
            saved["betas"] = tuple(saved.get("betas", options.betas))
            saved["priors"] = tuple(saved.get("priors", ()))
            options = dataclasses.replace(FineTuneOptions(**saved), epochs=options.epochs,
                                          text_encoder=options.text_encoder)  # None: the one the checkpoint recorded
            self.model = load_backbone(backbone, resume, self.device,
                                       base_weights_sha256=_base_weights_sha256(checkpoint))
            self.base_sha256 = self.resumed["backbone_weights_sha256"]
            if self.resumed.get("last_trainable"):
                self.model.load_state_dict(self.resumed["last_trainable"], strict=False)
        else:
            self.model = load_backbone(backbone, checkpoint, self.device)
            self.base_sha256 = _base_weights_sha256(checkpoint) if checkpoint is not None \
                else self.model.spec.weights_sha256
        self.guidance: PriorGuidance | None = None
        if self.model.priors is not None or options.priors:
            # continuing a MedSeg-R checkpoint, its priors keep training with the text encoder it recorded
            self.guidance = PriorGuidance.for_backbone(self.model, options.text_encoder)
            if self.model.priors is None:
                attach_priors(self.model, options.priors, text_dim=self.guidance.text_encoder.dim, seed=options.seed)
            self.guidance.check(self.model)
            clip_path = self.guidance.clip_path
            options = dataclasses.replace(options, priors=tuple(self.model.priors.use),
                                          text_encoder=None if clip_path is None else str(clip_path))
        elif options.text_encoder is not None:
            raise InputError(f"text encoder {options.text_encoder} is for MedSeg-R priors: give the priors to train "
                             "(--priors) too")
        if self.resumed is not None and options.semi_supervised:
            raise InputError(f"checkpoint {resume} is of a semi-supervised run, which cannot be resumed "
                             "(its pseudo-labels are not kept); start it again without --resume")
        self.options = options
        self.pseudo_labels: SelectionReport | None = None
        self.world = distributed.world()
        self.encoder_runtime = encoder_runtime
        self.dataset = SliceDataset(self.rows, self.base_sha256, cache, negatives=self.options.prompt != "box")
        knowledge = KnowledgeBase.load()
        self._lesions = {name for name in self.dataset.structures if knowledge.category_of(name) == "lesion"}
        self.train_index, self.val_index = split_validation([item.synthetic for item in self.dataset.slices], options)

    def _encode(self, progress: ProgressCallback | None) -> int:
        """Encode the annotated slices through an inference-optimised copy of the frozen encoder."""
        encoder = copy.deepcopy(self.model).eval()
        encoder.spec = dataclasses.replace(encoder.spec, encoder_weights_sha256=self.base_sha256)  # same frozen encoder
        encoder = optimize_encoder_for_inference(encoder, self.encoder_runtime if self.device.type == "cpu" else "torch")
        try:
            return self.dataset.encode(encoder, progress)
        finally:
            del encoder

    def _prior_tokens(self) -> dict[str, AttributeTokens] | None:
        """structure -> attribute tokens of its knowledge-base description (None without priors)."""
        if self.guidance is None:
            return None
        modality = {item.structure: item.modality for item in self.dataset.slices}
        return {name: self.guidance.tokens(self.guidance.parse(name, modality[name], structure=name))
                for name in sorted(modality)}

    def _embeddings(self, items: list[TrainingSlice]) -> torch.Tensor:
        return torch.stack([self.dataset.embedding(item) for item in items]).to(self.device, torch.float32)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean Dice over the held-out slices (box without jitter), None without validation slices."""
        if not self.val_index:
            return None
        self.model.eval()
        tokens = self._prior_tokens()
        scores = []
        val_index = distributed.shard(self.val_index)
        for start in range(0, len(val_index), 8):
            items = [self.dataset.slices[i] for i in val_index[start:start + 8]]
            boxes = choose_prompts(prompt_boxes(items, self.options.box_margin, 0, None).to(self.device),
                                   self.options.prompt, None)
            for logits, item in zip(slice_logits(self.model, self._embeddings(items), boxes, items, tokens), items):
                scores.append(dice((logits > 0).cpu().numpy(), item.mask))
        return distributed.mean(scores)

    def run(self, progress: ProgressCallback | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> FineTuneResult:
        """Train until `epochs` or early stopping, writing the checkpoint after every epoch; with
        semi_supervised, then select pseudo-labels and train `epochs` more on both."""
        opts, model = self.options, self.model
        if opts.semi_supervised:
            self.dataset.include_unannotated()
        with distributed.rank0_first(enabled=self.dataset.cache.directory is not None):  # fill the disk cache once
            encoded = self._encode(progress)
        model.requires_grad_(False)
        prefixes = _trainable_prefixes(opts)
        parameters = [p for name, p in model.named_parameters() if name.startswith(prefixes)]
        for p in parameters:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(parameters, lr=opts.learning_rate, betas=opts.betas,
                                      weight_decay=opts.weight_decay)
        state = _TrainingState(best_state=_trainable_state(model, opts), encoded=encoded)
        if self.resumed is not None:
            optimizer.load_state_dict(self.resumed["optimizer"])
            state.restore(self.resumed, prefixes)
        self._train(optimizer, parameters, state, state.start_epoch, opts.epochs, "supervised", progress, on_epoch)
        if opts.semi_supervised:
            model.load_state_dict(state.best_state, strict=False)  # the teacher: stage one's best
            self.pseudo_labels = distributed.from_rank0(self._select_pseudo_labels(progress) if self.world.main else None)
            self.train_index = self.train_index + self.dataset.add_pseudo_labels(self.pseudo_labels.accepted)
            state.stale, state.stopped = 0, False
            self._train(optimizer, parameters, state, opts.epochs, 2 * opts.epochs, "semi-supervised", progress,
                        on_epoch)
        if len(state.history) == state.start_epoch:  # a resumed run that had nothing left to do still writes
            self._save(optimizer, state.start_epoch, state)
        model.load_state_dict(state.best_state, strict=False)
        model.eval().requires_grad_(False)
        return FineTuneResult(self.output, self.training_set_version, self.dataset.structures,
                              len(self.train_index), len(self.val_index), len(state.history), state.best_epoch,
                              state.best_dice, state.history, encoded, state.stopped, self.pseudo_labels,
                              self._synthetic_count())

    def _synthetic_count(self) -> int:
        return sum(self.dataset.slices[i].synthetic for i in self.train_index)

    def _batches(self, epoch: int) -> list[tuple[list[TrainingSlice], list[torch.Tensor | None]]]:
        """This rank's (slices, prompts) batches of an epoch: all ranks draw every batch from the same
        seeded generator (order, box jitter, prompt choice), each rank keeps its share."""
        opts = self.options
        synthetic = [item.synthetic for item in self.dataset.slices]
        rng = np.random.default_rng([opts.seed, epoch])
        passes = [epoch_order(self.train_index, synthetic, opts.synthetic_share, rng)]
        steps = max(math.ceil(len(passes[0]) / opts.batch_size), opts.min_steps_per_epoch)
        steps = math.ceil(steps / self.world.size) * self.world.size  # the same number of steps on every rank
        while sum(map(len, passes)) < steps * opts.batch_size:
            passes.append(epoch_order(self.train_index, synthetic, opts.synthetic_share, rng))
        order = np.concatenate(passes)
        batches = []
        grow = opts.box_margin + opts.box_jitter
        for step in range(steps):
            items = [self.dataset.slices[i] for i in order[step * opts.batch_size:(step + 1) * opts.batch_size]]
            if opts.lesion_background_share > 0:
                items = [self._maybe_beside(item, grow, rng) for item in items]
            boxes = choose_prompts(prompt_boxes(items, opts.box_margin, opts.box_jitter, rng, opts.extent_box_share,
                                                opts.neighbour_box_share).to(self.device), opts.prompt, rng)
            batches.append((items, boxes))
        return distributed.shard(batches)

    def _maybe_beside(self, item: TrainingSlice, grow: int, rng: np.random.Generator) -> TrainingSlice:
        """With probability options.lesion_background_share, a lesion's positive slice prompted beside the
        lesion instead (beside_structure); otherwise the slice itself."""
        if not item.mask.any() or item.structure not in self._lesions or rng.random() >= self.options.lesion_background_share:
            return item
        return beside_structure(item, grow, rng) or item

    def _train(self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], state: _TrainingState,
               first: int, last: int, stage: str, progress: ProgressCallback | None,
               on_epoch: Callable[[dict], None] | None) -> None:
        """Epochs first+1 .. last on the current training slices, with validation and early stopping."""
        opts, model = self.options, self.model
        loss_fn = DiceCELoss(sigmoid=True)
        tokens = self._prior_tokens()
        for epoch in range(first, last):
            if state.stopped:
                break
            started = time.perf_counter()
            batches = self._batches(epoch)
            # dropout in the priors: same seed, same run (each rank its own stream)
            torch.manual_seed(opts.seed * 100_003 + epoch + 1_000_003 * self.world.rank)
            model.mask_decoder.train(opts.train_decoder)
            model.prompt_encoder.train(opts.train_prompt_encoder)
            if model.priors is not None:
                model.priors.train()
            losses = []
            for step, (items, boxes) in enumerate(batches):
                loss = batch_loss(model, loss_fn, self._embeddings(items), boxes, items, tokens)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(parameters)
                optimizer.step()
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(f"fine-tuning epoch {epoch + 1}/{last}", step + 1, len(batches))
            val_dice = self.validate()
            record = {"epoch": epoch + 1, "stage": stage, "train_loss": distributed.mean(losses),
                      "val_dice": val_dice, "seconds": time.perf_counter() - started, "steps": len(batches)}
            state.history.append(record)
            if val_dice is None or state.best_dice is None or val_dice > state.best_dice + 1e-4:
                state.best_epoch, state.best_dice, state.stale = epoch + 1, val_dice, 0
                state.best_state = _trainable_state(model, opts)
            else:
                state.stale += 1
                state.stopped = state.stale >= opts.patience
            record["best_epoch"] = state.best_epoch
            self._save(optimizer, epoch + 1, state)
            if on_epoch is not None:
                on_epoch(record)

    def _select_pseudo_labels(self, progress: ProgressCallback | None) -> SelectionReport:
        """Pseudo-label the unannotated slices of partial annotations with the current model and
        select the confident ones close to annotated slices (see MedSegAdaptLib.training.pseudo_labels)."""
        self.model.eval()
        tokens = self._prior_tokens()
        candidates = []
        for number, annotation in enumerate(self.dataset.partial):
            encoder = annotation.job.encoder(self.model, self.dataset.cache)
            with torch.inference_mode():
                candidates += pseudo_label_volume(encoder, annotation.masks, annotation.case_id, annotation.structure,
                                                  prior_tokens=None if tokens is None else tokens[annotation.structure])
            if progress is not None:
                progress("pseudo-labelling", number + 1, len(self.dataset.partial))
        return select_pseudo_labels(candidates, self.options.confidence_percentile, self.options.distance_percentile)

    def _save(self, optimizer: torch.optim.Optimizer, epoch: int, state: _TrainingState) -> None:
        """Write the checkpoint (rank 0 only)."""
        if not self.world.main:
            return
        full = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        full.update(state.best_state)
        options = dataclasses.asdict(self.options)
        options["betas"], options["priors"] = list(options["betas"]), list(options["priors"])
        metrics = {"best_epoch": state.best_epoch, "best_val_dice": state.best_dice, "history": state.history,
                   "train_slices": len(self.train_index), "val_slices": len(self.val_index),
                   "synthetic_slices": self._synthetic_count(),
                   "slices_encoded": state.encoded, "options": options}
        if self.pseudo_labels is not None:
            metrics["pseudo_labels"] = self.pseudo_labels.to_dict()
        save_checkpoint(self.output, make_checkpoint(
            backbone=self.model.spec.name, backbone_weights_sha256=self.base_sha256,
            training_set_version=self.training_set_version, structures=self.dataset.structures,
            metrics=metrics, model=full, optimizer=optimizer.state_dict(), epoch=epoch,
            last_trainable=_trainable_state(self.model, self.options),
            stopping={"stale_epochs": state.stale, "stopped_early": state.stopped},
            priors=None if self.guidance is None else self.guidance.metadata(self.options.priors)))


def fine_tune(store: FineTuningStore, output: str | Path, *, backbone: str = "auto",
              checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
              options: FineTuneOptions = FineTuneOptions(), resume: str | Path | None = None,
              cache: EmbeddingCache | None = None, encoder_runtime: str = "auto",
              progress: ProgressCallback | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> FineTuneResult:
    """Fine-tune on `store`'s training view and write the checkpoint to `output`; see FineTuner."""
    return FineTuner(store, output, backbone, checkpoint, device, options, resume, cache,
                     encoder_runtime).run(progress, on_epoch)


__all__ = ["FineTuneOptions", "FineTuneResult", "FineTuner", "fine_tune"]
