"""Preprocessing and prompt geometry (no model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from MedSegAdaptLib.core.axes import put_slice, take_slices
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference.embedding_cache import EmbeddingCache, volume_key
from MedSegAdaptLib.inference.preprocess import (
    clip_intensities,
    logits_to_slice,
    preset_for,
    slices_to_input,
)
from MedSegAdaptLib.inference.prompts import Box3D, Point3D, mask_rect
from MedSegAdaptLib.io.modality import detect_modality


def test_presets_follow_the_structure_name():
    assert preset_for("Right Lung", "ct").name == "lung"
    assert preset_for("thoracic vertebral column", "ct").name == "bone"
    assert preset_for("liver", "ct").name == "soft_tissue"
    assert preset_for("liver", "mr").modality == "mr"
    with pytest.raises(InputError, match="unknown modality 'pet'"):
        preset_for("liver", "pet")


def test_modality_detection(ctchest4):
    volume, _ = ctchest4
    assert detect_modality(volume.array, None)[0] == "ct"
    mr_like = np.random.default_rng(0).uniform(0, 800, (20, 20, 5))
    modality, reason = detect_modality(mr_like, None)
    assert modality == "mr" and "percentile" in reason
    assert detect_modality(mr_like, "CT") == ("ct", "Modality tag is CT")


def test_ct_window_and_mr_percentiles():
    ct = np.array([-3000, -1000, 0, 300, 3000], dtype=np.int16).reshape(1, 1, 5)
    clipped = clip_intensities(ct, preset_for("lung", "ct"))
    assert clipped.dtype == np.float32
    assert clipped.ravel().tolist() == [-1000.0, -1000.0, 0.0, 300.0, 400.0]  # air to enhanced soft tissue
    mr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    clipped = clip_intensities(mr, preset_for("brain", "mr"))
    assert clipped.min() > 1 and clipped.max() < 998


def test_slices_to_input_resizes_longest_side_and_pads():
    slices = np.zeros((2, 64, 128), dtype=np.float32)
    slices[:, 10:20, 30:40] = 5.0
    images = slices_to_input(slices, 256)
    assert images.shape == (2, 3, 256, 256)
    assert float(images.min()) == 0.0 and float(images.max()) == pytest.approx(1.0)
    assert float(images[:, :, 128:, :].abs().sum()) == 0.0  # padded rows at the bottom
    assert float(images[0, 0, 20:40, 60:80].mean()) > 0.9  # the bright square moved with the scale


def test_logits_map_back_onto_the_slice_grid():
    logits = torch.full((1, 1, 256, 256), -10.0)
    logits[..., 20:40, 60:80] = 10.0  # a square on the 128x256 valid region of a 64x128 slice
    mask = logits_to_slice(logits, 64, 128, 256)[0] > 0
    rows, cols = np.nonzero(mask.numpy())
    assert mask.shape == (64, 128)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 19, 30, 39)


def test_slices_are_shown_with_i_as_x_and_j_as_y():
    volume = np.zeros((5, 7, 3), dtype=np.uint8)
    volume[4, 1, 2] = 1
    image = take_slices(volume, 2, [2])[0]
    assert image.shape == (7, 5) and image[1, 4] == 1
    assert Point3D((4, 1, 2)).xy(2) == (4, 1)
    restored = np.zeros_like(volume)
    put_slice(restored, 2, 2, image)
    assert np.array_equal(restored, volume)
    assert mask_rect(image).tolist() == [4, 1, 4, 1]
    assert mask_rect(np.zeros((3, 3), bool)) is None


def test_box_parsing_and_validation():
    box = Box3D.parse("1,2,3,10,20,30")
    assert box.lo == (1, 2, 3) and box.hi == (10, 20, 30)
    assert box.rect(2).tolist() == [1, 2, 10, 20]
    assert box.slice_range(2) == (3, 30)
    with pytest.raises(InputError, match="'1,2,3' is not six"):
        Box3D.parse("1,2,3")
    with pytest.raises(InputError, match="empty along j: 20 > 5"):
        Box3D((0, 20, 0), (5, 5, 5)).validate((10, 30, 10))
    with pytest.raises(InputError, match=r"outside the volume along k: \[3, 30\] is not within \[0, 9\]"):
        box.validate((64, 64, 10))


def test_box_around_a_mask():
    mask = np.zeros((10, 10, 10), bool)
    mask[3:5, 4:6, 7] = True
    box = Box3D.around(mask, margin=2)
    assert box.lo == (1, 2, 5) and box.hi == (6, 7, 9)
    with pytest.raises(InputError, match="empty mask"):
        Box3D.around(np.zeros((3, 3, 3), bool))


def test_point_parsing():
    assert Point3D.parse("1,2,3") == Point3D((1, 2, 3), 1)
    assert Point3D.parse("1,2,3,0").label == 0
    with pytest.raises(InputError, match="label 0"):
        Point3D.parse("1,2,3,7")
    with pytest.raises(InputError, match=r"point \(9, 0, 0\) lies outside"):
        Point3D((9, 0, 0)).validate((5, 5, 5))


def test_embedding_cache_memory_and_disk(tmp_path):
    key = volume_key("volume", "weights", "ct-lung", 2)
    assert key != volume_key("volume", "weights", "ct-bone", 2)
    embedding = torch.randn(256, 64, 64)
    cache = EmbeddingCache(tmp_path)
    cache.put(key, 7, embedding)
    assert cache.get(key, 8) is None
    again = EmbeddingCache(tmp_path).get(key, 7)
    assert again.dtype == torch.float16
    assert torch.allclose(again.float(), embedding, atol=1e-2)
    assert not list(tmp_path.rglob("*.tmp"))


def test_start_slice_is_the_box_middle_or_the_slice_with_most_foreground_points():
    from MedSegAdaptLib.inference.propagation import _start_slice

    assert _start_slice(2, Box3D((0, 0, 4), (9, 9, 11)), []) == 7
    points = [Point3D((1, 1, 10)), Point3D((2, 2, 20)), Point3D((3, 3, 20)), Point3D((4, 4, 15), 0)]
    assert _start_slice(2, None, points) == 20
    with pytest.raises(InputError, match="at least one foreground point"):
        _start_slice(2, None, [Point3D((1, 1, 1), 0)])


def test_intensity_cut_removes_only_voxels_far_outside_the_expected_range():
    from MedSegAdaptLib.inference.intensity_cut import cut_to_expected_hu

    hounsfield = np.array([-1000, -850, -450, -350, 40, 900], dtype=np.int16).reshape(1, 2, 3)
    mask = np.ones(hounsfield.shape, dtype=bool)
    kept = cut_to_expected_hu(mask, hounsfield, [(-900.0, -700.0)], tolerance=300.0)
    assert kept.ravel().tolist() == [True, True, True, False, False, False]
    assert cut_to_expected_hu(mask, hounsfield, []) is mask


def test_a_chain_keeps_the_first_mask_no_stop_rule_ends():
    from MedSegAdaptLib.inference.propagation import (
        PropagationOptions,
        first_passing,
        mask_vanished,
        predicted_iou_below,
    )

    follow, rectangle = np.zeros((2, 8, 8), dtype=bool)
    follow[2:4, 2:4] = True  # 4 pixels
    rectangle[1:7, 1:7] = True  # 36 pixels
    masks = np.stack([follow, rectangle])
    rules = [mask_vanished(10)]
    # the follow box's mask vanishes: both orders fall back on the rectangle's, which passes
    assert first_passing(3, masks, np.array([0.9, 0.6]), rules, confident_first=False) == (1, None)
    assert first_passing(3, masks, np.array([0.9, 0.6]), rules, confident_first=True) == (1, None)
    # both pass: prompt order keeps the follow box, confidence the more confident rectangle
    assert first_passing(3, masks, np.array([0.6, 0.9]), [], confident_first=False) == (0, None)
    assert first_passing(3, masks, np.array([0.6, 0.9]), [], confident_first=True) == (1, None)
    # both end the chain: the first in order, with its own reason
    kept, reason = first_passing(3, masks, np.array([0.5, 0.4]), [predicted_iou_below(0.7)], confident_first=True)
    assert kept == 0 and reason == "predicted IoU 0.50 < 0.7 at slice 3"
    assert first_passing(3, masks[:1], np.array([0.5]), rules, confident_first=True) == (0, "mask vanished at slice 3")
    with pytest.raises(InputError, match="box_rect 'always' is not one of off, rescue, confident"):
        PropagationOptions(box_rect="always")
