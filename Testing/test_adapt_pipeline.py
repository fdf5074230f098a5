"""MedSeg-Adapt: ensemble fusion, self-validation on real CTChest4 masks, and the generate-store-train loop."""
from __future__ import annotations

import json

import numpy as np
import pytest

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.cli.adapt import parse_settings
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.environments.ensemble_masks import box_variants, fuse
from MedSegAdaptLib.environments.pipeline import (
    Source,
    generate_samples,
    load_hook,
    simulate_with_known_slices,
    summarize,
)
from MedSegAdaptLib.environments.self_validation import (
    body_mask,
    self_validate,
    volume_share,
)
from MedSegAdaptLib.environments.simulators import environment
from MedSegAdaptLib.inference import Box3D, Segmenter
from MedSegAdaptLib.io import read_volume
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.checkpoint import load_checkpoint
from MedSegAdaptLib.store import FineTuningStore


def test_fusion_outvotes_and_down_weights_an_outlier():
    base = np.zeros((8, 8, 4), bool)
    base[2:6, 2:6, 1:3] = True
    grown = base.copy()
    grown[1:7, 1:7, 1:3] = True
    outlier = np.zeros_like(base)
    outlier[0:2, 6:8, 0] = True
    fused = fuse([base, grown, base, outlier])
    assert np.array_equal(fused.mask, base)
    assert fused.weights[3] == min(fused.weights) and fused.weights[3] < 0.1
    assert 0 < fused.agreement < 1
    assert fuse([base, base]).agreement == 1.0


def test_box_variants_move_in_plane_sides_only_and_stay_inside():
    variants = box_variants(Box3D((0, 5, 3), (10, 20, 9)), (12, 30, 20))
    assert [v.lo for v in variants] == [(0, 5, 3), (1, 6, 3), (0, 3, 3)]
    assert [v.hi for v in variants] == [(10, 20, 9), (9, 19, 9), (11, 22, 9)]


@pytest.fixture(scope="module")
def knowledge():
    return KnowledgeBase.load()


@pytest.fixture(scope="module")
def body(ctchest4):
    return body_mask(ctchest4[0])


def test_reference_masks_pass_self_validation(ctchest4, knowledge, body):
    volume, reference = ctchest4
    for name in ("right lung", "left lung", "thoracic vertebral column"):
        mask = reference.get(name).mask
        result = self_validate(mask, volume, "ct", knowledge.structure(name), 1.0, volume_share(mask, body))
        assert result.passed and result.score == 1.0, (name, result.checks)
        assert set(result.checks) == {"side", "components", "relative size", "intensity", "agreement"}


def test_wrong_side_extra_piece_wrong_tissue_and_disagreement_fail(ctchest4, knowledge, body):
    volume, reference = ctchest4
    right = reference.get("right lung").mask
    left = reference.get("left lung").mask
    rule = knowledge.structure("right lung")
    share = volume_share(right, body)
    wrong_side = self_validate(left, volume, "ct", rule, 1.0, share)
    assert wrong_side.failed() == ["side"] and not wrong_side.passed
    cut = right.copy()
    middle = int(np.median(np.argwhere(right)[:, 2]))
    cut[:, :, middle - 1:middle + 2] = False  # an upper and a lower piece
    two_pieces = self_validate(cut, volume, "ct", rule, 1.0, share)
    assert two_pieces.failed() == ["components"] and two_pieces.checks["components"]["value"] == 2
    bone = self_validate(reference.get("thoracic vertebral column").mask, volume, "ct",
                         knowledge.structure("left lung"), 1.0)
    assert "intensity" in bone.failed() and "relative size" not in bone.checks
    shaky = self_validate(right, volume, "ct", rule, 0.3, share)
    assert shaky.failed() == ["agreement"] and shaky.score == pytest.approx((4 + 0.3) / 5)
    assert self_validate(np.zeros_like(right), volume, "ct", rule, 1.0).score == 0.0


def test_settings_parse_json_values():
    assert parse_settings(["dose_fraction=0.1", "radius_mm=[3,8]", "lesion=liver lesion"]) == {
        "dose_fraction": 0.1, "radius_mm": (3, 8), "lesion": "liver lesion"}
    with pytest.raises(InputError, match="NAME=VALUE"):
        parse_settings(["dose_fraction"])


def test_environments_command_lists_all_five(capsys):
    assert main(["environments", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listing] == ["low-dose-ct", "high-res-ct", "varying-field-mri", "pediatric", "pathology"]
    assert listing[0]["parameters"]["dose_fraction"] == 0.25


def test_adapting_a_store_without_corrections_is_refused(tmp_path, ctchest4):
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(ctchest4[0], "CTChest4", modality="ct")
        with pytest.raises(InputError, match="no corrections"):
            generate_samples(store, environment("low-dose-ct"), 1, [])
        with pytest.raises(InputError, match=r"threshold must be in \[0, 1\], got 1.5"):
            generate_samples(store, environment("low-dose-ct"), 1, [], threshold=1.5)
        assert len(store.cases()) == 1


def test_hooks_are_loaded_by_name_with_clear_errors():
    assert load_hook("json:dumps", "--llm") is json.dumps
    with pytest.raises(InputError, match="expected MODULE:FUNCTION"):
        load_hook("json.dumps", "--llm")
    with pytest.raises(InputError, match="cannot import module 'no_such_module_xyz'"):
        load_hook("no_such_module_xyz:refine", "--generator")
    with pytest.raises(InputError, match="module 'json' has no function 'refine'"):
        load_hook("json:refine", "--generator")


def test_a_generator_breaking_the_grid_is_refused_before_anything_is_stored(tmp_path, ctchest4):
    volume, reference = ctchest4
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", "left lung", reference.get("left lung").mask, "reference")

        def crop(sample, rng):
            return sample.volume.array[:-1]

        with pytest.raises(InputError, match=r"generator .*crop returned an image of shape \(\d+, .*expected finite "
                                             r"values of the simulated image's shape"):
            generate_samples(store, environment("varying-field-mri"), 1, [], generator=crop)
        assert [case.case_id for case in store.cases()] == ["CTChest4"]


def test_exact_labels_are_the_simulators_on_the_slices_the_corrections_became(tmp_path, ctchest4):
    volume, reference = ctchest4
    lung = reference.get("left lung").mask
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", "left lung", lung, "reference")  # whole volume: known on every slice
        (label,) = generate_samples(store, environment("varying-field-mri"), 1, [])
        stored = store.label(label.label_id)
        assert label.accepted and label.validation is None and label.annotated_slices is None
        assert np.array_equal(read_volume(stored.file).array != 0, lung)  # this simulator keeps the grid
        assert stored.reviews[-1].reviewer == "simulator" and json.loads(stored.comment)["label"] == "simulator"
        assert ("CTChest4-varying-field-mri-000", "synthetic") in {(r.case_id, r.kind) for r in store.training_view()}
        store.submit_mask("CTChest4", "right lung", reference.get("right lung").mask, "reference",
                          annotated_slices={"k": [20]})  # partial: exact on slice 20 only
        (partial,) = generate_samples(store, environment("varying-field-mri"), 1, [], structures=["right lung"])
        assert partial.annotated_slices == {"k": [20]} and store.label(partial.label_id).annotated_slices == {"k": [20]}
        exact = read_volume(store.label(partial.label_id).file).array != 0
        assert np.array_equal(exact[:, :, 20], reference.get("right lung").mask[:, :, 20]) and exact.sum() == exact[:, :, 20].sum()
        cases = len(store.cases())
        with pytest.raises(InputError, match="no model to pseudo-label 'right lung'"):
            generate_samples(store, environment("varying-field-mri"), 1, [], labels="exact+pseudo",
                             structures=["right lung"])
        assert len(store.cases()) == cases, "the failed sample left nothing in the store"


def test_known_slices_follow_a_grid_changing_simulator(ctchest4):
    """Pediatric resamples onto a smaller grid (here the anatomy shrinks along K by 0.6 in a field of view
    of 0.8): annotated slices 14 and 20 become other sample slices, whose labels are those the whole label
    gets there."""
    volume, reference = ctchest4
    lung = reference.get("left lung").mask
    pediatric = environment("pediatric", field_of_view=(0.8, 0.8, 0.8))
    source = Source("CTChest4", volume.path, "sha", {"left lung": lung}, {"left lung": {"k": [14, 20]}})
    sample, known = simulate_with_known_slices(pediatric, volume, source, np.random.default_rng(0))
    whole = pediatric.apply(volume, {"left lung": lung}, np.random.default_rng(0)).labels["left lung"]
    slices = known["left lung"]["k"]
    assert slices and slices != [14, 20] and len(slices) <= 4, slices
    assert np.array_equal(sample.labels["left lung"][:, :, slices], whole[:, :, slices])
    others = [k for k in range(lung.shape[2]) if k not in slices]
    assert not sample.labels["left lung"][:, :, others].any()


def test_a_sample_is_generated_once_per_parameters(tmp_path, ctchest4):
    volume, reference = ctchest4
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", "left lung", reference.get("left lung").mask, "reference",
                          annotated_slices={"k": [14, 20]})
        first = generate_samples(store, environment("varying-field-mri"), 2, [], seed=5)
        again = generate_samples(store, environment("varying-field-mri"), 2, [], seed=5)
        assert [g.label_id for g in again] == [g.label_id for g in first] and all(g.cached for g in again)
        assert not any(g.cached for g in first) and len(store.cases()) == 3
        other = generate_samples(store, environment("varying-field-mri", field_strength_t=3.0), 1, [], seed=5)
        assert not other[0].cached and len(store.cases()) == 4


@pytest.mark.slow
def test_generated_labels_enter_store_and_training_view(tmp_path, ctchest4, embeddings):
    volume, reference = ctchest4
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", "right lung", reference.get("right lung").mask, "reference")
        segmenter = Segmenter(load_backbone(for_inference=True), embeddings)
        generated = generate_samples(store, environment("low-dose-ct"), 1, [segmenter], seed=3, labels="pseudo")
        assert [g.structure for g in generated] == ["right lung"]
        label = generated[0]
        print(label.to_dict())
        assert label.reference_dice > 0.8
        assert label.accepted == label.validation.passed
        stored = store.label(label.label_id)
        assert stored.kind == "synthetic"
        assert json.loads(stored.comment)["queries"] == label.queries and len(label.queries) >= 2
        in_view = {(row.case_id, row.kind) for row in store.training_view()}
        assert ((label.case_id, "synthetic") in in_view) == label.accepted
        assert (label.label_id in {q.label_id for q in store.review_queue()}) == (not label.accepted)
        assert summarize(generated)["right lung"]["generated"] == 1


@pytest.mark.slow
def test_adapt_command_generates_and_fine_tunes(tmp_path, ctchest4, capsys, monkeypatch, embedding_dir):
    volume, reference = ctchest4
    with FineTuningStore.init(tmp_path / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", "left lung", reference.get("left lung").mask, "reference",
                          annotated_slices={"k": [14, 20]})
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "site_models.py").write_text(  # a user's image model and language model, stand-ins
        "import numpy as np\n"
        "def refine(sample, rng):\n    return np.floor(sample.volume.array) + 0.5\n"
        "def rewrite(prompt):\n    return 'Outline the left lung on this small scan.'\n")
    monkeypatch.syspath_prepend(str(hooks))
    code = main(["adapt", str(tmp_path / "store"), "--environment", "pediatric", "--count", "1", "-o",
                 str(tmp_path / "adapted.pt"), "--epochs", "1", "--min-steps-per-epoch", "2", "--threshold", "0",
                 "--generator", "site_models:refine", "--llm", "site_models:rewrite", "--cache-dir", str(embedding_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "left lung: 1 synthetic labels (1 exact from the simulator), 1 accepted" in out
    assert "synthetic) / 0 validation slices" in out
    checkpoint = load_checkpoint(tmp_path / "adapted.pt")
    with FineTuningStore(tmp_path / "store") as store:
        assert checkpoint["training_set_version"] == store.training_set_version()
        assert {row.kind for row in store.training_view()} == {"correction", "synthetic"}
        (label,) = [label for label in store.review_queue(include_reviewed=True) if label.kind == "synthetic"]
        image = read_volume(store.case(label.case_id).image).array
        provenance = json.loads(label.comment)
    assert np.all(image % 1 == 0.5), "the stored image is the generator's"
    assert provenance["parameters"]["generator"] == "site_models:refine"
    assert provenance["parameters"]["llm"] == "site_models:rewrite"
    assert "Outline the left lung on this small scan." in provenance["queries"]
