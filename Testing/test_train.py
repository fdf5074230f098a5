"""Fine-tuning: annotated-slice loss, checkpoints (metadata, refusal, resume), a real tiny run, the loop."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from MedSegAdaptLib.cli import build_parser
from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference.prompts import mask_rect
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.checkpoint import load_checkpoint, save_checkpoint
from MedSegAdaptLib.models.loading import packaged_litemedsam_weights
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, FineTuner, SliceDataset, fine_tune
from MedSegAdaptLib.training.dataset import TrainingSlice
from MedSegAdaptLib.training.trainer import (
    batch_loss,
    beside_structure,
    epoch_order,
    prompt_boxes,
    slice_logits,
    split_validation,
)

STRUCTURE = "left lung"
SLICES = [17, 23]
TINY = FineTuneOptions(epochs=1, batch_size=2, min_steps_per_epoch=2)


def _store(folder, volume, mask, slices=SLICES, structure=STRUCTURE):
    store = FineTuningStore.init(folder)
    store.add_image(volume, "CTChest4", modality="ct")
    store.submit_mask("CTChest4", structure, mask, "tester", annotated_slices=None if slices is None else {"k": slices})
    return store


@pytest.fixture()
def store(tmp_path, ctchest4):
    volume, reference = ctchest4
    with _store(tmp_path / "store", volume, reference.get(STRUCTURE).mask) as opened:
        yield opened


def _decoder_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("mask_decoder.")}


def test_unannotated_slices_do_not_change_loss_or_gradient(tmp_path, ctchest4, embeddings):
    volume, reference = ctchest4
    truth = reference.get(STRUCTURE).mask
    wrong = truth.copy()
    outside = np.ones(truth.shape[2], dtype=bool)
    outside[SLICES] = False
    wrong[:, :, outside] = ~truth[:, :, outside]  # every unannotated slice inverted
    tuners = []
    for name, mask in (("right", truth), ("wrong", wrong)):
        with _store(tmp_path / name, volume, mask) as store:
            tuners.append(FineTuner(store, tmp_path / f"{name}.pt", options=TINY, cache=embeddings))
    grads, losses = [], []
    model = tuners[0].model
    loss_fn = DiceCELoss(sigmoid=True)
    for tuner in tuners:
        tuner._encode(None)
        dataset = tuner.dataset
        assert [(s.axis, s.index) for s in dataset.slices] == [(2, k) for k in SLICES]
        boxes = prompt_boxes(dataset.slices, 3, 0, None)
        model.zero_grad()
        loss = batch_loss(model, loss_fn, tuner._embeddings(dataset.slices), boxes, dataset.slices)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(model.mask_decoder.output_upscaling[0].weight.grad.clone())
    assert losses[0] == losses[1]
    assert torch.equal(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_whole_volume_label_gives_every_axial_slice_with_foreground(tmp_path, ctchest4):
    volume, reference = ctchest4
    truth = reference.get(STRUCTURE).mask
    with _store(tmp_path / "store", volume, truth, slices=None) as store:
        dataset = SliceDataset(store.training_view(), "0" * 64)
    expected = [k for k in range(truth.shape[2]) if truth[:, :, k].sum() >= 5]
    assert [s.index for s in dataset.slices] == expected


def test_annotated_empty_slice_is_a_negative_with_a_borrowed_box(tmp_path, ctchest4):
    volume, reference = ctchest4
    truth = reference.get(STRUCTURE).mask  # the left lung spans axial slices 6-33
    with _store(tmp_path / "store", volume, truth, slices=[2, 17, 23]) as store:
        boxed = SliceDataset(store.training_view(), "0" * 64)
        dataset = SliceDataset(store.training_view(), "0" * 64, negatives=True)
        tuners = {prompt: FineTuner(store, tmp_path / f"{prompt}.pt", options=dataclasses.replace(TINY, prompt=prompt))
                  for prompt in ("box", "mixed", "none")}
    assert {prompt: [item.index for item in tuner.dataset.slices] for prompt, tuner in tuners.items()} == {
        "box": [17, 23], "mixed": [2, 17, 23], "none": [2, 17, 23]}
    assert [item.index for item in boxed.slices] == [17, 23]  # box-prompted training skips negatives
    by_index = {item.index: item for item in dataset.slices}
    assert sorted(by_index) == [2, 17, 23]
    assert not by_index[2].mask.any() and by_index[17].mask.any()
    assert np.array_equal(by_index[2].rect, by_index[17].rect)
    with _store(tmp_path / "only-empty", volume, truth, slices=[2, 3]) as store, \
            pytest.raises(InputError, match="hold no foreground"):
        SliceDataset(store.training_view(), "0" * 64, negatives=True)


def test_extent_boxes_cover_the_labels_annotated_slices_and_prompt_their_share(tmp_path, ctchest4):
    volume, reference = ctchest4
    truth = reference.get(STRUCTURE).mask
    with _store(tmp_path / "extent", volume, truth) as store:
        dataset = SliceDataset(store.training_view(), "0" * 64)
    union = np.logical_or.reduce(list(take_slices(truth, 2, SLICES)))
    for item in dataset.slices:
        assert item.extent_rect.tolist() == mask_rect(union).tolist()
        assert (item.rect[:2] >= item.extent_rect[:2]).all() and (item.rect[2:] <= item.extent_rect[2:]).all()
        item.scale = 1.0
    own = prompt_boxes(dataset.slices, 0, 0, np.random.default_rng(0), extent_share=0.0)
    extent = prompt_boxes(dataset.slices, 0, 0, np.random.default_rng(0), extent_share=1.0)
    assert [b.tolist() for b in own] == [item.rect.astype(np.float32).tolist() for item in dataset.slices]
    assert all(b.tolist() == dataset.slices[0].extent_rect.astype(np.float32).tolist() for b in extent)
    differ = [n for n in range(len(own)) if not torch.equal(own[n], extent[n])]
    assert differ  # the lung's extent is wider than some annotated slice's mask
    drawn = [torch.equal(prompt_boxes(dataset.slices, 0, 0, np.random.default_rng(seed), 0.5)[n], extent[n])
             for seed in range(20) for n in differ]
    assert 0.2 < np.mean(drawn) < 0.8
    assert all(item.neighbour_rects == () for item in dataset.slices)  # slices 17 and 23 are not neighbours
    with _store(tmp_path / "neighbours", volume, truth, slices=[17, 18]) as store:
        first, second = SliceDataset(store.training_view(), "0" * 64).slices
    assert [r.tolist() for r in first.neighbour_rects] == [second.rect.tolist()]
    assert [r.tolist() for r in second.neighbour_rects] == [first.rect.tolist()]
    first.scale = second.scale = 1.0
    drawn = prompt_boxes([first] * 10, 0, 0, np.random.default_rng(0), neighbour_share=1.0)
    assert all(box.tolist() == second.rect.tolist() for box in drawn)
    with pytest.raises(InputError, match="extent box share 1.5"):
        FineTuneOptions(extent_box_share=1.5)
    with pytest.raises(InputError, match="add up to 1.2"):
        FineTuneOptions(extent_box_share=0.6, neighbour_box_share=0.6)


def test_a_box_beside_the_structure_holds_none_of_it_and_keeps_its_size():
    mask = np.zeros((60, 80), bool)
    mask[25:35, 30:45] = True
    item = TrainingSlice("c", "brain tumour", 2, 0, "key", mask, mask_rect(mask), extent_rect=mask_rect(mask),
                         neighbour_rects=(mask_rect(mask),))
    grow = 4
    drawn = [beside_structure(item, grow, np.random.default_rng(seed)) for seed in range(30)]
    assert all(d is not None and not d.mask.any() and d.extent_rect is None and d.neighbour_rects == () for d in drawn)
    for d in drawn:
        x0, y0, x1, y1 = (int(v) for v in d.rect)
        assert (x1 - x0, y1 - y0) == (44 - 30, 34 - 25)  # the prompt keeps the structure's size
        assert x0 - grow >= 0 and y0 - grow >= 0 and x1 + grow < 80 and y1 + grow < 60
        assert not mask[y0 - grow:y1 + grow + 1, x0 - grow:x1 + grow + 1].any()  # even jittered, no foreground
    assert len({tuple(d.rect.tolist()) for d in drawn}) > 2  # several of the free neighbouring positions
    wide = np.zeros((60, 80), bool)
    wide[10:50, 20:60] = True  # no room for a box of its size beside it
    assert beside_structure(TrainingSlice("c", "s", 2, 0, "key", wide, mask_rect(wide)), grow,
                            np.random.default_rng(0)) is None


def test_lesion_background_share_prompts_only_lesions_beside_them(tmp_path, ctchest4):
    volume, _ = ctchest4
    spot = np.zeros(volume.array.shape, bool)
    spot[100:115, 110:130, SLICES] = True  # small, with room beside it
    options = dataclasses.replace(TINY, lesion_background_share=0.5, min_steps_per_epoch=20)
    negatives = {}
    for name in ("left lung", "lung tumour"):  # an organ, a lesion (the same mask for both)
        with _store(tmp_path / name.replace(" ", "-"), volume, spot, structure=name) as store:
            tuner = FineTuner(store, tmp_path / "unused.pt", options=options)
        for item in tuner.dataset.slices:
            item.scale = 1.0  # set by encoding, which batches do not need
        items = [item for batch, _ in tuner._batches(0) for item in batch]
        negatives[name] = np.mean([not item.mask.any() for item in items])
    assert negatives["left lung"] == 0
    assert 0.2 < negatives["lung tumour"] < 0.8
    with pytest.raises(InputError, match="lesion background share"):
        FineTuneOptions(lesion_background_share=1.0)


def test_a_negative_slice_is_scored_by_cross_entropy_alone():
    model = load_backbone()
    embeddings = torch.randn(2, 256, 64, 64) * 0.1
    empty = np.zeros((40, 50), bool)
    full = np.zeros((40, 50), bool)
    full[10:30, 10:40] = True
    items = [TrainingSlice("c", "s", 2, k, "key", mask, np.array([8, 8, 42, 32]), scale=256 / 50)
             for k, mask in enumerate((empty, full))]
    boxes = prompt_boxes(items, 0, 0, None)
    loss_fn = DiceCELoss(sigmoid=True)
    with torch.no_grad():
        logits = slice_logits(model, embeddings, boxes, items)
        both = batch_loss(model, loss_fn, embeddings, boxes, items)
        target = [torch.from_numpy(m).float()[None, None] for m in (empty, full)]
        negative = loss_fn.bce(logits[0][None, None], target[0])
        positive = loss_fn(logits[1][None, None], target[1])
    assert loss_fn(logits[0][None, None], target[0]) > negative + 0.5  # smoothed Dice of an empty target is ~1
    assert torch.allclose(both, (negative + positive) / 2)


def test_empty_training_view_is_refused(tmp_path):
    with FineTuningStore.init(tmp_path / "empty") as store:
        with pytest.raises(InputError, match="training view is empty"):
            FineTuner(store, tmp_path / "out.pt")


def test_tiny_run_on_real_embeddings_reduces_the_loss(tmp_path, store, embeddings):
    options = FineTuneOptions(epochs=3, batch_size=2, min_steps_per_epoch=4, learning_rate=2e-4)
    tuner = FineTuner(store, tmp_path / "ft.pt", options=options, cache=embeddings)
    tuner._encode(None)
    items = tuner.dataset.slices
    loss_fn = DiceCELoss(sigmoid=True)

    def loss_now():
        with torch.no_grad():
            return float(batch_loss(tuner.model, loss_fn, tuner._embeddings(items),
                                    prompt_boxes(items, 3, 0, None), items))

    before = loss_now()
    result = tuner.run()
    after = loss_now()
    print(f"loss on the annotated slices {before:.4f} -> {after:.4f}; epochs {result.history}")
    assert after < before * 0.9
    assert result.epochs_run == 3 and result.train_slices == 2 and result.val_slices == 0


def test_checkpoint_round_trip_with_metadata(tmp_path, store, embeddings):
    path = tmp_path / "ft.pt"
    result = fine_tune(store, path, options=TINY, cache=embeddings)
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == "medsegadapt-checkpoint" and checkpoint["version"] == 1
    assert checkpoint["backbone"] == "litemedsam"
    assert checkpoint["backbone_weights_sha256"] == load_backbone().spec.weights_sha256
    assert checkpoint["training_set_version"] == store.training_set_version() == result.training_set_version
    assert checkpoint["structures"] == [STRUCTURE]
    assert checkpoint["epoch"] == 1 and checkpoint["metrics"]["history"][0]["epoch"] == 1
    assert checkpoint["optimizer"]["state"]
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    loaded = load_backbone(checkpoint=path)
    for key, value in checkpoint["model"].items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the frozen encoder is the pretrained one; the decoder moved
    pretrained = load_backbone()
    assert torch.equal(loaded.state_dict()["image_encoder.patch_embed.seq.0.c.weight"],
                       pretrained.state_dict()["image_encoder.patch_embed.seq.0.c.weight"])
    assert not torch.equal(loaded.mask_decoder.output_upscaling[0].weight, pretrained.mask_decoder.output_upscaling[0].weight)
    assert load_backbone(checkpoint=path, for_inference=True, encoder_runtime="torch").spec.name == "litemedsam"
    # so its slice embeddings are cached under the pretrained weights' key, not re-encoded
    assert loaded.spec.weights_sha256 != pretrained.spec.weights_sha256
    assert loaded.spec.encoder_key == pretrained.spec.encoder_key == pretrained.spec.weights_sha256


def test_checkpoint_of_mismatched_backbone_is_refused(tmp_path, store, embeddings):
    path = tmp_path / "ft.pt"
    fine_tune(store, path, options=TINY, cache=embeddings)
    with pytest.raises(InputError, match=r"ft.pt was fine-tuned from backbone litemedsam .*not medsam"):
        load_backbone("medsam", checkpoint=path)
    with pytest.raises(InputError, match=r"ft.pt was fine-tuned from litemedsam weights with SHA-256 .* "
                                         r"but the backbone weights here have SHA-256 000000000000"):
        load_backbone(checkpoint=path, base_weights_sha256="0" * 64)
    checkpoint = load_checkpoint(path)

    lying = dict(checkpoint, backbone="sam_vit_b")
    save_checkpoint(tmp_path / "lying.pt", lying)
    with pytest.raises(InputError, match="says it was fine-tuned from sam_vit_b but holds litemedsam weights"):
        load_backbone(checkpoint=tmp_path / "lying.pt")

    other = dict(checkpoint, backbone_weights_sha256="f" * 64)
    save_checkpoint(tmp_path / "other.pt", other)
    with pytest.raises(InputError, match="other.pt was fine-tuned from litemedsam weights with SHA-256 ffffffffffff"):
        FineTuner(store, tmp_path / "resumed.pt", checkpoint=packaged_litemedsam_weights(),
                  resume=tmp_path / "other.pt")

    newer = dict(checkpoint, version=2)
    save_checkpoint(tmp_path / "newer.pt", newer)
    with pytest.raises(InputError, match="version 2"):
        load_backbone(checkpoint=tmp_path / "newer.pt")
    torch.save(checkpoint["model"], tmp_path / "plain.pt")
    with pytest.raises(InputError, match="not a MedSegAdapt fine-tuning checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_resume_continues_from_the_saved_epoch(tmp_path, store, embeddings):
    two = FineTuneOptions(epochs=2, batch_size=2, min_steps_per_epoch=2)
    straight = fine_tune(store, tmp_path / "straight.pt", options=two, cache=embeddings)
    fine_tune(store, tmp_path / "part.pt", options=TINY, cache=embeddings)  # "interrupted" after epoch 1
    assert load_checkpoint(tmp_path / "part.pt")["epoch"] == 1
    resumed = fine_tune(store, tmp_path / "part.pt", options=two, resume=tmp_path / "part.pt", cache=embeddings)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert load_checkpoint(tmp_path / "part.pt")["epoch"] == 2
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-4)
    a, b = load_checkpoint(tmp_path / "straight.pt")["model"], load_checkpoint(tmp_path / "part.pt")["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key

    # a finished run resumed with the same epochs has nothing left to do
    again = fine_tune(store, tmp_path / "again.pt", options=two, resume=tmp_path / "part.pt", cache=embeddings)
    assert len(again.history) == 2

    # a changed training set is a new run, not a resume
    volume_mask = np.zeros(store.case("CTChest4").geometry.shape, dtype=bool)
    volume_mask[40:60, 40:60, 20] = True
    store.submit_mask("CTChest4", "extra", volume_mask, "tester", annotated_slices={"k": [20]})
    with pytest.raises(InputError, match="was trained on training set version .* resume only continues"):
        FineTuner(store, tmp_path / "x.pt", resume=tmp_path / "part.pt")


def test_validation_split_and_early_stopping(tmp_path, ctchest4, embeddings):
    volume, reference = ctchest4
    options = FineTuneOptions(epochs=5, batch_size=2, min_steps_per_epoch=1, learning_rate=1e-12,
                              min_slices_for_validation=4, validation_fraction=0.5, patience=1)
    with _store(tmp_path / "store", volume, reference.get(STRUCTURE).mask, slices=[14, 17, 20, 23]) as store:
        result = fine_tune(store, tmp_path / "ft.pt", options=options, cache=embeddings)
    assert (result.train_slices, result.val_slices) == (2, 2)
    assert all(0.5 < r["val_dice"] <= 1 for r in result.history)
    assert result.stopped_early and result.epochs_run == 2 and result.best_epoch == 1


def test_finetune_parser():
    parser = build_parser()
    args = parser.parse_args(["finetune", "STORE", "-o", "ft.pt", "--device", "cpu", "--epochs", "3",
                              "--resume", "old.pt", "--lr", "5e-5"])
    assert (str(args.store), str(args.output), args.device, args.epochs, str(args.resume), args.lr) == \
        ("STORE", "ft.pt", "cpu", 3, "old.pt", 5e-5)
    assert args.func.__name__ == "run_finetune"
    shares = parser.parse_args(["finetune", "STORE", "-o", "ft.pt", "--extent-box-share", "0.25",
                                "--neighbour-box-share", "0.5", "--lesion-background-share", "0.1"])
    assert (shares.extent_box_share, shares.neighbour_box_share, shares.lesion_background_share) == (0.25, 0.5, 0.1)
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "STORE"])  # -o is required


def test_finetune_command_runs_and_reports(tmp_path, store, capsys):
    args = build_parser().parse_args(["finetune", str(store.root), "-o", str(tmp_path / "ft.pt"), "--device", "cpu",
                              "--epochs", "1", "--min-steps-per-epoch", "1", "--cache-dir", str(tmp_path / "cache")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "2 training / 0 validation slices" in out and "wrote" in out
    assert load_checkpoint(tmp_path / "ft.pt")["epoch"] == 1
    options = dataclasses.asdict(TINY)
    assert set(load_checkpoint(tmp_path / "ft.pt")["metrics"]["options"]) == set(options)


@pytest.mark.slow
def test_demo_segments_then_feedback_improves_held_out_dice(tmp_path, capsys, embedding_dir):
    """`medsegadapt demo` end to end on the real CTChest4 and LiteMedSAM weights.

    Measured 2026-12-02 on CPU: thoracic vertebral column held-out Dice 0.539 -> 0.66, lumbar vertebral
    column 0.614 -> 0.76 (3 annotated slices each, 10 epochs; with the -1000..400 HU lung window the
    lungs start at 0.94-0.96 and need no correction)."""
    from MedSegAdaptLib.cli import main
    from MedSegAdaptLib.evaluation import dice
    from MedSegAdaptLib.io import read_segmentation
    from MedSegAdaptLib.io.sample_data import ctchest4_segmentation_path

    assert main(["demo", "--output-dir", str(tmp_path), "--device", "cpu", "--cache-dir", str(embedding_dir)]) == 0
    reference = read_segmentation(ctchest4_segmentation_path())
    prediction = read_segmentation(tmp_path / "ctchest4_prediction.seg.nrrd")
    assert dice(prediction.get("right lung").mask, reference.get("right lung").mask) > 0.85
    [run] = (tmp_path / "feedback_loop").iterdir()
    rows = {row["name"]: row for row in json.loads((run / "dice_before_after.json").read_text())}
    assert set(rows) == {"lumbar vertebral column", "thoracic vertebral column"}
    for row in rows.values():
        assert row["held_out_dice_after"] > row["held_out_dice_before"] + 0.05, row
        assert row["dice_after"] > row["dice_before"], row
    with FineTuningStore(run / "store") as store:
        assert store.verify().ok
        assert len(store.history("CTChest4", "lumbar vertebral column")) == 2  # the prediction, the correction
    assert load_checkpoint(run / "finetuned.pt")["structures"] == sorted(rows)
    assert "held_out_dice_after" in capsys.readouterr().out


def test_segment_command_uses_the_finetuned_checkpoint(tmp_path, store, embeddings, ctchest4, capsys):
    from MedSegAdaptLib.cli import main
    from MedSegAdaptLib.inference import Box3D
    from MedSegAdaptLib.io import read_segmentation

    fine_tune(store, tmp_path / "ft.pt", options=TINY, cache=embeddings)
    box = Box3D.around(ctchest4[1].get(STRUCTURE).mask, 2)
    box = Box3D((box.lo[0], box.lo[1], 19), (box.hi[0], box.hi[1], 21))  # three slices keep it fast
    image = store.case("CTChest4").image
    output = tmp_path / "seg.seg.nrrd"
    assert main(["segment", str(image), "-o", str(output), "--structure", STRUCTURE, "--box-ijk", str(box),
                 "--checkpoint", str(tmp_path / "ft.pt"), "--device", "cpu"]) == 0
    assert read_segmentation(output).get(STRUCTURE).mask[:, :, 19:22].any()
    assert main(["segment", str(image), "-o", str(output), "--structure", STRUCTURE, "--box-ijk", str(box),
                 "--checkpoint", str(tmp_path / "ft.pt"), "--backbone", "medsam"]) == 2
    assert "fine-tuned from backbone litemedsam" in capsys.readouterr().err


def test_an_epoch_is_a_pass_over_the_real_slices_with_as_many_synthetic_draws():
    synthetic = [False] * 6 + [True] * 200
    rng = np.random.default_rng(0)
    order = epoch_order(list(range(206)), synthetic, 0.5, rng)
    assert sorted(i for i in order if i < 6) == list(range(6))  # each real slice once
    drawn = [i for i in order if i >= 6]
    assert len(drawn) == 6 and len(set(drawn)) == 6
    assert len(epoch_order(list(range(206)), synthetic, 0.25, rng)) == 6 + 2
    assert sorted(epoch_order(list(range(206)), synthetic, None, rng)) == list(range(206))  # in proportion
    few = epoch_order([0, 1, 2, 3, 6], synthetic, 0.75, rng)  # 12 draws from 1 synthetic slice: it repeats
    assert sorted(few)[:4] == [0, 1, 2, 3] and list(few).count(6) == 12
    one = epoch_order([0, 6, 7], synthetic, 0.25, rng)  # 1/3 of a synthetic draw: one, not none
    assert sorted(one)[0] == 0 and len(one) == 2 and one.max() >= 6


def test_only_real_slices_are_held_out_for_validation_with_a_synthetic_share():
    synthetic = [False, True] * 10 + [True] * 30
    train, validation = split_validation(synthetic, FineTuneOptions())
    assert validation and not any(synthetic[i] for i in validation) and len(validation) == 2
    assert sorted(train + validation) == list(range(50))
    _, proportional = split_validation(synthetic, FineTuneOptions(synthetic_share=None))
    assert any(synthetic[i] for i in proportional) and len(proportional) == 10
    assert split_validation([False] * 9 + [True] * 40, FineTuneOptions())[1] == []  # 9 real: too few to hold out
    with pytest.raises(InputError, match=r"synthetic share must be in \(0, 1\), got 1.0"):
        FineTuneOptions(synthetic_share=1.0)
