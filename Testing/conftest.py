"""Shared pytest options and fixtures."""
from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-slow",
        action="store_true",
        default=False,
        help="skip tests marked slow (real LiteMedSAM weights on real data); CI runs them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--skip-slow"):
        return
    skip = pytest.mark.skip(reason="slow test skipped with --skip-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Exported ONNX encoders go to a per-session folder, not the user's ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("medsegadapt-cache")
    previous = os.environ.get("MEDSEGADAPT_CACHE")
    os.environ["MEDSEGADAPT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MEDSEGADAPT_CACHE")
    else:
        os.environ["MEDSEGADAPT_CACHE"] = previous


@pytest.fixture(scope="session")
def ctchest4():
    """The real chest CT shipped in slicerio and its real Slicer segmentation."""
    from MedSegAdaptLib.io import read_segmentation, read_volume
    from MedSegAdaptLib.io.sample_data import (
        ctchest4_segmentation_path,
        ctchest4_volume_path,
    )

    return read_volume(ctchest4_volume_path()), read_segmentation(ctchest4_segmentation_path())


@pytest.fixture(scope="session")
def litemedsam():
    """The packaged LiteMedSAM weights, encoder optimised for inference, on CPU."""
    from MedSegAdaptLib.models import load_backbone

    return load_backbone(for_inference=True)


@pytest.fixture(scope="session")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory):
    """The session's disk embedding cache, for commands given --cache-dir and for torchrun's processes:
    each CTChest4 slice is encoded once per intensity preset by the packaged encoder (ONNX Runtime).
    Tests that count encoded slices, or run the encoder in PyTorch, keep caches of their own."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def embeddings(embedding_dir):
    """The session's embedding cache (in memory, backed by embedding_dir)."""
    from MedSegAdaptLib.inference import EmbeddingCache

    return EmbeddingCache(embedding_dir)


@pytest.fixture(scope="session")
def segmenter(litemedsam, embeddings):
    """One Segmenter for the session, so slice embeddings are encoded once."""
    from MedSegAdaptLib.inference import Segmenter

    return Segmenter(litemedsam, embeddings)


@pytest.fixture(scope="session")
def clinical():
    """The five real clinical cases by name (fetched by `make cases`): (ClinicalCase, Volume, mask)."""
    from MedSegAdaptLib.io.clinical_cases import clinical_cases

    return {case.name: (case, *case.load()) for case in clinical_cases()}


@pytest.fixture()
def app():
    """A fresh real MRML scene set up as Slicer does (Testing/slicer_scene.py; needs slicer-core)."""
    from slicer_scene import make_scene

    return make_scene()


@pytest.fixture()
def volume_node(app):
    """CTChest4 loaded into the `app` scene as a scalar volume node."""
    from MedSegAdaptLib.io.sample_data import ctchest4_volume_path

    return app.load_volume(ctchest4_volume_path(), "CTChest4")
