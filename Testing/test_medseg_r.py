"""MedSeg-R on the real backbone: identity before training, fine-tuning with priors, report-guided and
prompt-free segmentation through the library and the command line, a CLIP text encoder end to end."""
from __future__ import annotations

import shutil

import pytest
import torch
from tiny_clip import make_tiny_clip

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.io import read_segmentation
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.checkpoint import load_checkpoint
from MedSegAdaptLib.priors.modules import PRIORS, attach_priors
from MedSegAdaptLib.priors.text_encoder import TextEncoder
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune
from MedSegAdaptLib.training.options import PRIORS as OPTION_PRIORS

STRUCTURE = "left lung"
SLICES = [17, 23]
TINY_PRIORS = FineTuneOptions(epochs=1, batch_size=2, min_steps_per_epoch=2, priors=PRIORS, prompt="mixed")


@pytest.fixture(scope="module")
def embeddings():
    return EmbeddingCache()


@pytest.fixture(scope="module")
def priors_checkpoint(tmp_path_factory, ctchest4, embeddings):
    """A MedSeg-R checkpoint trained for one epoch on two annotated left-lung slices, prompts mixed."""
    volume, reference = ctchest4
    folder = tmp_path_factory.mktemp("medseg_r")
    with FineTuningStore.init(folder / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", STRUCTURE, reference.get(STRUCTURE).mask, "tester", annotated_slices={"k": SLICES})
        fine_tune(store, folder / "ft.pt", options=TINY_PRIORS, cache=embeddings)
    return folder / "ft.pt"


def _small_box(reference) -> Box3D:
    box = Box3D.around(reference.get(STRUCTURE).mask, 2)
    return Box3D((box.lo[0], box.lo[1], 19), (box.hi[0], box.hi[1], 21))  # three slices keep it fast


def test_option_priors_match_the_modules():
    assert OPTION_PRIORS == PRIORS


@pytest.mark.parametrize("kwargs, message", [
    ({"priors": ("location", "colour")}, "unknown priors colour"),
    ({"train_decoder": False}, "nothing to train"),
    ({"prompt": "scribble"}, "prompt 'scribble'"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        FineTuneOptions(**kwargs)


def test_untrained_priors_reproduce_the_backbone_volume(ctchest4, embeddings):
    volume, reference = ctchest4
    plain = Segmenter(load_backbone(for_inference=True, encoder_runtime="torch"), embeddings)
    guided = Segmenter(attach_priors(load_backbone(for_inference=True, encoder_runtime="torch")), embeddings)
    box = _small_box(reference)
    expected = plain.segment(volume, STRUCTURE, box=box)
    outcome = guided.segment(volume, STRUCTURE, box=box)
    assert outcome.report is not None and outcome.report.structure == STRUCTURE
    assert outcome.mask.any() and (outcome.mask == expected.mask).all()
    assert outcome.propagation.slice_iou == expected.propagation.slice_iou


def test_priors_checkpoint_round_trip(priors_checkpoint):
    checkpoint = load_checkpoint(priors_checkpoint)
    assert checkpoint["priors"]["use"] == list(PRIORS)
    assert checkpoint["priors"]["text_encoder"].startswith("all-MiniLM-L6-v2@")
    assert checkpoint["priors"]["text_encoder_kind"] == "minilm" and checkpoint["priors"]["text_dim"] == 384
    assert checkpoint["priors"]["text_encoder_path"] is None  # packaged: nothing to find again
    assert checkpoint["priors"]["knowledge_base"]
    assert checkpoint["metrics"]["options"]["prompt"] == "mixed"
    assert any(key.startswith("priors.perceptual.") for key in checkpoint["model"])
    loaded = load_backbone(checkpoint=priors_checkpoint)
    assert loaded.priors is not None and loaded.priors.use == PRIORS
    assert loaded.prompt_free_structures == (STRUCTURE,)
    for key, value in checkpoint["model"].items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for gate in ("priors.perceptual.perceptual_gate.scale", "priors.perceptual.semantic_gate.scale"):
        assert checkpoint["model"][gate].abs().sum() > 0, f"training opened {gate}"
    assert load_backbone().priors is None  # the pretrained backbone has none


def test_same_seed_same_priors_checkpoint(tmp_path, priors_checkpoint, ctchest4, embeddings):
    volume, reference = ctchest4
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", STRUCTURE, reference.get(STRUCTURE).mask, "tester", annotated_slices={"k": SLICES})
        fine_tune(store, tmp_path / "again.pt", options=TINY_PRIORS, cache=embeddings)
    first, again = load_checkpoint(priors_checkpoint)["model"], load_checkpoint(tmp_path / "again.pt")["model"]
    different = [key for key in first if not torch.equal(first[key], again[key])]
    assert not different, f"same seed, different weights: {different[:3]}"


def test_resume_keeps_the_priors(tmp_path, priors_checkpoint, ctchest4, embeddings):
    volume, reference = ctchest4
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", STRUCTURE, reference.get(STRUCTURE).mask, "tester", annotated_slices={"k": SLICES})
        # continuing from a MedSeg-R checkpoint (not resuming): its priors are kept and train on
        result = fine_tune(store, tmp_path / "more.pt", checkpoint=priors_checkpoint,
                           options=FineTuneOptions(epochs=1, min_steps_per_epoch=1), cache=embeddings)
    assert result.epochs_run == 1
    assert load_checkpoint(tmp_path / "more.pt")["priors"]["use"] == list(PRIORS)


def test_report_and_prompt_free_segmentation_from_the_command_line(tmp_path, priors_checkpoint, ctchest4, capsys,
                                                                   embedding_dir):
    from MedSegAdaptLib.io.sample_data import ctchest4_volume_path

    image = str(ctchest4_volume_path())
    output = tmp_path / "free.seg.nrrd"
    report = "Left lung: clear, no consolidation."
    assert main(["segment", image, "-o", str(output), "--report", report, "--checkpoint", str(priors_checkpoint),
                 "--device", "cpu", "--cache-dir", str(embedding_dir)]) == 0
    out = capsys.readouterr().out
    assert "report: structure 'left lung'" in out and "location [" in out
    segmentation = read_segmentation(output)
    assert segmentation.get(STRUCTURE).mask.shape == ctchest4[0].array.shape  # named from the report
    # a structure the checkpoint was not trained on needs a prompt
    assert main(["segment", image, "-o", str(tmp_path / "x.seg.nrrd"), "--structure", "right lung",
                 "--checkpoint", str(priors_checkpoint), "--device", "cpu"]) == 2
    assert "needs a prompt" in capsys.readouterr().err and not (tmp_path / "x.seg.nrrd").exists()


def test_report_without_trained_priors_names_the_structure_and_says_so(tmp_path, ctchest4, capsys, embedding_dir):
    from MedSegAdaptLib.io.sample_data import ctchest4_volume_path

    box = _small_box(ctchest4[1])
    output = tmp_path / "named.seg.nrrd"
    assert main(["segment", str(ctchest4_volume_path()), "-o", str(output), "--report", "the LEFT LUNG",
                 "--box-ijk", str(box), "--device", "cpu", "--cache-dir", str(embedding_dir)]) == 0
    out = capsys.readouterr().out
    assert "no trained MedSeg-R priors" in out
    assert read_segmentation(output).get("left lung").mask[:, :, 19:22].any()
    assert main(["segment", str(ctchest4_volume_path()), "-o", str(output), "--box-ijk", str(box)]) == 2
    assert "--structure" in capsys.readouterr().err


# --- a CLIP text encoder from a local folder ----------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, ctchest4):
    """(checkpoint, CLIP folder, store, embedding cache folder): MedSeg-R priors trained for one epoch through
    `medsegadapt finetune --text-encoder` with a tiny random CLIP text encoder of width 32."""
    volume, reference = ctchest4
    folder = tmp_path_factory.mktemp("clip")
    clip = make_tiny_clip(folder / "tiny-clip")
    with FineTuningStore.init(folder / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", STRUCTURE, reference.get(STRUCTURE).mask, "tester", annotated_slices={"k": SLICES})
    assert main(["finetune", str(folder / "store"), "-o", str(folder / "clip.pt"), "--priors", "all",
                 "--text-encoder", str(clip), "--epochs", "1", "--min-steps-per-epoch", "2", "--device", "cpu",
                 "--encoder-runtime", "torch", "--cache-dir", str(folder / "cache")]) == 0
    return folder / "clip.pt", clip, folder / "store", folder / "cache"


def test_clip_text_encoder_is_recorded_and_loaded_again(clip_run):
    path, clip, _, _ = clip_run
    checkpoint = load_checkpoint(path)
    priors = checkpoint["priors"]
    assert priors["text_encoder_kind"] == "clip" and priors["text_dim"] == 32
    assert priors["text_encoder"] == TextEncoder.from_path(clip).identity
    assert priors["text_encoder_path"] == str(clip.resolve())
    assert checkpoint["metrics"]["options"]["text_encoder"] == str(clip)
    assert tuple(checkpoint["model"]["priors.cognitive.project.0.weight"].shape) == (256, 32)  # takes CLIP's tokens
    assert checkpoint["model"]["priors.perceptual.semantic_gate.scale"].abs().sum() > 0, "the priors trained"
    loaded = load_backbone(checkpoint=path)
    assert loaded.priors.cognitive.text_dim == 32
    guidance = Segmenter(loaded).guidance  # the text encoder the checkpoint recorded
    assert guidance.text_encoder.kind == "clip" and guidance.text_encoder.folder == clip
    guidance.check(loaded)
    tokens = guidance.tokens(guidance.parse(STRUCTURE, "ct", structure=STRUCTURE))
    assert tokens["location"][0].shape[-1] == 32


def test_segment_finds_a_moved_clip_encoder_and_refuses_a_missing_or_other_one(tmp_path, clip_run, ctchest4, capsys):
    from MedSegAdaptLib.io.sample_data import ctchest4_volume_path

    path, clip, _, cache = clip_run
    output = tmp_path / "clip.seg.nrrd"
    command = ["segment", str(ctchest4_volume_path()), "-o", str(output), "--structure", STRUCTURE,
               "--box-ijk", str(_small_box(ctchest4[1])), "--checkpoint", str(path), "--device", "cpu",
               "--encoder-runtime", "torch", "--cache-dir", str(cache)]
    moved = tmp_path / "moved-clip"
    shutil.move(clip, moved)
    try:
        assert main(command) == 2
        error = capsys.readouterr().err
        assert "CLIP text encoder clip-text:tiny-clip@" in error and "32-dimensional" in error
        assert str(clip.resolve()) in error and "--text-encoder PATH" in error
        wide = make_tiny_clip(tmp_path / "wide-clip", hidden_size=48)
        assert main([*command, "--text-encoder", str(wide)]) == 2
        error = capsys.readouterr().err
        assert "priors take 32-dimensional text tokens" in error and "48-dimensional" in error
        other = make_tiny_clip(tmp_path / "other-clip")  # same width, other weights
        assert main([*command, "--text-encoder", str(other)]) == 2
        assert "trained with text encoder clip-text:tiny-clip@" in capsys.readouterr().err
        assert not output.exists()
        assert main([*command, "--text-encoder", str(moved)]) == 0  # renamed too: the same weights
        assert read_segmentation(output).get(STRUCTURE).mask[:, :, 19:22].any()
    finally:
        shutil.move(moved, clip)


def test_finetune_refuses_a_text_encoder_without_priors_or_a_missing_one(tmp_path, clip_run, capsys):
    _, clip, store, _ = clip_run
    command = ["finetune", str(store), "-o", str(tmp_path / "x.pt"), "--device", "cpu"]
    assert main([*command, "--text-encoder", str(clip)]) == 2
    assert "is for MedSeg-R priors" in capsys.readouterr().err
    assert main([*command, "--priors", "all", "--text-encoder", str(tmp_path / "no-clip")]) == 2
    assert "no-clip does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
