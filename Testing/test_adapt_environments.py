"""MedSegAdaptLib.environments: environment simulators and clinical queries, on the real CTChest4 volume."""
from __future__ import annotations

import numpy as np
import pytest

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.environments import (
    ENVIRONMENTS,
    HighResCT,
    LowDoseCT,
    Pathology,
    Pediatric,
    VaryingFieldMRI,
    clinical_queries,
    environment,
    sample_queries,
)
from MedSegAdaptLib.io import Geometry, Volume
from MedSegAdaptLib.knowledge import parse_report

CHEST = ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column",
         "right lung", "left lung", "tissue"]


@pytest.fixture(scope="module")
def chest(ctchest4) -> tuple[Volume, dict[str, np.ndarray]]:
    volume, segmentation = ctchest4
    return volume, {segment.name: segment.mask for segment in segmentation.segments}


@pytest.fixture(scope="module")
def slab(chest) -> tuple[Volume, dict[str, np.ndarray]]:
    """Five real axial slices through both lungs (projection simulation costs time per slice)."""
    volume, labels = chest
    g = volume.geometry
    origin = np.asarray(g.origin) + np.reshape(g.direction, (3, 3)) @ (np.array([0, 0, 12]) * g.spacing)
    geometry = Geometry((*g.shape[:2], 5), g.spacing, tuple(origin), g.direction)
    return Volume(volume.array[:, :, 12:17], geometry), {n: m[:, :, 12:17] for n, m in labels.items()}


@pytest.fixture(scope="module")
def low_dose(slab) -> dict[float, np.ndarray]:
    """Added noise (output - input, HU) of the slab at two dose fractions, same seed."""
    volume, labels = slab
    return {dose: LowDoseCT(dose_fraction=dose).apply(volume, labels, np.random.default_rng(3)).volume.array
            - volume.array for dose in (0.1, 0.5)}


def mm3(mask: np.ndarray, geometry: Geometry) -> float:
    return float(mask.sum() * np.prod(geometry.spacing))


def centroid_lps(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return (geometry.ijk_to_lps() @ np.append(ijk, 1.0))[:3]


def grid_corners(geometry: Geometry) -> np.ndarray:
    """LPS bounds (min, max) of the grid's outer voxel edges."""
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, geometry.shape[0] - 0.5)
                        for j in (-0.5, geometry.shape[1] - 0.5) for k in (-0.5, geometry.shape[2] - 0.5)])
    points = (geometry.ijk_to_lps() @ corners.T)[:3]
    return np.stack([points.min(axis=1), points.max(axis=1)])


def radial_power_ratio(image: np.ndarray) -> float:
    """Mean power at low spatial frequencies (< 0.1 cycles/pixel) over that at high ones (0.3-0.5)."""
    power = np.abs(np.fft.fft2(image)) ** 2
    frequency = np.hypot(*np.meshgrid(*(np.fft.fftfreq(n) for n in image.shape), indexing="ij"))
    return float(power[frequency < 0.1].mean() / power[(frequency > 0.3) & (frequency < 0.5)].mean())


# Registry ----------------------------------------------------------------------------------------


def test_registry_lists_the_five_environments_with_their_parameters():
    assert list(ENVIRONMENTS) == ["low-dose-ct", "high-res-ct", "varying-field-mri", "pediatric", "pathology"]
    for name, cls in ENVIRONMENTS.items():
        env = environment(name)
        assert type(env) is cls and env.name == name and len(cls.description) > 20
        assert env.parameters() and all(not key.startswith("_") for key in env.parameters())
    assert environment("low-dose-ct").parameters() == {
        "dose_fraction": 0.25, "photons_per_ray": 1e5, "angles": 180, "mu_water_per_cm": 0.19}
    assert environment("Low-Dose-CT", dose_fraction=0.1).dose_fraction == 0.1
    assert Pathology().parameters()["lesion_hu"] == (20.0, 60.0)  # the knowledge base's "20-60 HU"


def test_unknown_environment_parameter_or_value_is_an_input_error():
    with pytest.raises(InputError, match=r"'low-dose'.*'low-dose-ct'.*'pathology'"):
        environment("low-dose")
    with pytest.raises(InputError, match=r"'dose'.*'dose_fraction'"):
        environment("low-dose-ct", dose=0.1)
    with pytest.raises(InputError, match="dose_fraction 0 must be in"):
        LowDoseCT(dose_fraction=0)
    with pytest.raises(InputError, match="'liver' is not a lesion \\(category organ\\)"):
        Pathology(lesion="liver")
    with pytest.raises(InputError, match="no HU range for 'brain tumor'"):
        Pathology(lesion="brain tumor")
    assert Pathology(lesion="glioma", lesion_hu=(10, 30)).lesion == "brain tumor"


@pytest.mark.parametrize("name", [n for n in ENVIRONMENTS if n != "low-dose-ct"] + ["low-dose-ct"])
def test_same_seed_gives_identical_output(name, chest, slab):
    volume, labels = slab if name == "low-dose-ct" else chest
    env = environment(name)
    first, second, other = (env.apply(volume, labels, np.random.default_rng(seed)) for seed in (5, 5, 6))
    assert np.array_equal(first.volume.array, second.volume.array)
    assert first.volume.geometry == second.volume.geometry and first.parameters == second.parameters
    assert first.labels.keys() == second.labels.keys()
    assert all(np.array_equal(first.labels[n], second.labels[n]) for n in first.labels)
    assert first.environment == name and first.modality == ("mr" if name == "varying-field-mri" else "ct")
    if name != "pediatric":  # the only deterministic environment
        assert not np.array_equal(first.volume.array, other.volume.array)


def test_labels_of_the_wrong_shape_are_an_input_error(chest):
    volume, labels = chest
    with pytest.raises(InputError, match=r"label 'ribs' has shape \(4, 4, 4\)"):
        Pediatric().apply(volume, {"ribs": np.zeros((4, 4, 4), bool)}, np.random.default_rng(0))


# Low-dose CT -------------------------------------------------------------------------------------


def test_low_dose_noise_grows_as_the_dose_falls_with_zero_mean(low_dose, slab):
    volume, labels = slab
    body = labels["tissue"] | labels["right lung"] | labels["left lung"]
    low, half = low_dose[0.1][body], low_dose[0.5][body]
    # quantum noise std goes as sqrt((1 - d) / d): 3 times higher at 10 % than at 50 % of the dose
    assert 2.3 < low.std() / half.std() < 3.7
    assert half.std() > 5
    assert abs(low.mean()) < 0.05 * low.std() and abs(half.mean()) < 0.05 * half.std()


def test_low_dose_noise_comes_from_projections_not_from_pixels(low_dose, slab):
    volume, labels = slab
    noise = low_dose[0.1]
    body = labels["tissue"] | labels["right lung"] | labels["left lung"]
    scanned_air = (volume.array > -1100) & (volume.array < -900) & ~body
    # more attenuation, fewer photons: noisier through the body than in the air beside it
    assert noise[body].std() > 1.15 * noise[scanned_air].std()
    # the ramp filter of filtered back-projection removes low frequencies; white pixel noise is flat
    white = np.random.default_rng(0).normal(0, noise.std(), noise.shape)
    for k in range(noise.shape[2]):
        assert radial_power_ratio(noise[:, :, k]) < 0.7 < 0.85 < radial_power_ratio(white[:, :, k])


def test_low_dose_keeps_labels_and_geometry_and_full_dose_changes_nothing(slab):
    volume, labels = slab
    sample = LowDoseCT(dose_fraction=0.3).apply(volume, labels, np.random.default_rng(0))
    assert sample.volume.geometry == volume.geometry and sample.volume.modality_hint == "CT"
    assert all(np.array_equal(sample.labels[n], labels[n]) for n in labels)
    assert sample.parameters["added_noise_std_hu"] > 5
    full = LowDoseCT(dose_fraction=1.0).apply(volume, labels, np.random.default_rng(0))
    assert np.array_equal(full.volume.array, volume.array.astype(np.float32))


def test_ct_environments_refuse_an_mr_volume(chest):
    volume, labels = chest
    mr = Volume(volume.array + 3024, volume.geometry, modality_hint="MR")
    for env in (LowDoseCT(), HighResCT(), Pathology()):
        with pytest.raises(InputError, match=f"{env.name} needs a CT volume"):
            env.apply(mr, labels, np.random.default_rng(0))


# Higher-resolution CT ----------------------------------------------------------------------------


def test_high_res_halves_spacing_over_the_same_extent_and_keeps_label_volumes(chest):
    volume, labels = chest
    sample = HighResCT().apply(volume, labels, np.random.default_rng(0))
    source, target = volume.geometry, sample.volume.geometry
    assert target.shape == (256, 256, 34)
    assert np.allclose(target.spacing, np.asarray(source.spacing) * (0.5, 0.5, 1.0))
    assert target.direction == source.direction
    assert np.allclose(grid_corners(target), grid_corners(source), atol=1e-3)
    for name in CHEST:
        assert mm3(sample.labels[name], target) == pytest.approx(mm3(labels[name], source), rel=0.03), name
        assert np.allclose(centroid_lps(sample.labels[name], target), centroid_lps(labels[name], source), atol=1.0)
    lung = sample.volume.array[sample.labels["right lung"]].mean()
    assert lung == pytest.approx(volume.array[labels["right lung"]].mean(), abs=30)


def test_high_res_kernel_is_sharper_than_plain_resampling(chest):
    volume, labels = chest
    sharp = HighResCT().apply(volume, labels, np.random.default_rng(0)).volume.array
    plain = HighResCT(sharpening_amount=0.0, noise_hu=0.0).apply(volume, labels, np.random.default_rng(0)).volume.array
    body = HighResCT().apply(volume, {"tissue": labels["tissue"]}, np.random.default_rng(0)).labels["tissue"]

    def edges(image: np.ndarray) -> float:
        return float(np.abs(np.diff(image, axis=0))[body[1:]].mean())

    assert edges(sharp) > 1.3 * edges(plain)


# Varying-field MRI -------------------------------------------------------------------------------


def test_varying_field_mri_gives_mr_like_non_negative_signal(chest):
    volume, labels = chest
    sample = VaryingFieldMRI().apply(volume, labels, np.random.default_rng(1))
    image = sample.volume.array
    assert sample.modality == "mr" and sample.volume.modality_hint == "MR"
    assert image.min() >= 0 and sample.volume.geometry == volume.geometry
    assert all(np.array_equal(sample.labels[n], labels[n]) for n in labels)
    # air-filled lungs are dark on MR, soft tissue and fat are not
    assert image[labels["right lung"]].mean() < 0.25 * image[labels["tissue"]].mean()
    low, high = sample.parameters["bias_field_range"]
    assert 0.6 < low < 1 < high < 1.6
    assert 0.7 <= sample.parameters["gamma"] <= 1.4


def test_higher_field_strength_means_less_noise(chest):
    volume, labels = chest
    outside = (volume.array < -2000)  # outside the CT's field of view: no signal, only noise

    def background_noise(tesla: float) -> float:
        env = VaryingFieldMRI(field_strength_t=tesla, gamma_range=(1.0, 1.0))
        return float(env.apply(volume, labels, np.random.default_rng(2)).volume.array[outside].std())

    assert background_noise(3.0) < 0.6 * background_noise(1.5)


# Pediatric ---------------------------------------------------------------------------------------


def test_pediatric_shrinks_labels_by_the_product_of_the_scales(chest):
    volume, labels = chest
    env = Pediatric()
    sample = env.apply(volume, labels, np.random.default_rng(0))
    target = sample.volume.geometry
    assert target.shape == volume.geometry.shape
    assert np.allclose(target.spacing, np.asarray(volume.geometry.spacing) * env.field_of_view)
    ratio = float(np.prod(env.scale))
    for name in CHEST:
        assert mm3(sample.labels[name], target) == pytest.approx(ratio * mm3(labels[name], volume.geometry),
                                                                 rel=0.06), name


def test_pediatric_moves_image_and_labels_together(chest):
    volume, labels = chest
    env = Pediatric()
    sample = env.apply(volume, labels, np.random.default_rng(0))
    target, image = sample.volume.geometry, sample.volume.array
    centre = volume.geometry.ijk_to_lps() @ np.append((np.asarray(volume.geometry.shape) - 1) / 2, 1)
    for name in ("right lung", "left lung", "thoracic vertebral column"):
        expected = centre[:3] + np.asarray(env.scale) * (centroid_lps(labels[name], volume.geometry) - centre[:3])
        assert np.allclose(centroid_lps(sample.labels[name], target), expected, atol=2.0), name
    # the image went through the same transform: the labels still sit on lung and on bone
    assert image[sample.labels["left lung"]].mean() < -700
    assert image[sample.labels["thoracic vertebral column"]].mean() > 150
    assert np.all(image[0, 0, :] == -1000)  # outside the source: air


# Pathology ---------------------------------------------------------------------------------------


def test_pathology_inserts_textured_lesions_inside_a_lung(chest):
    volume, labels = chest
    sample = Pathology().apply(volume, labels, np.random.default_rng(4))
    lesion = sample.labels["lung nodule"]
    lungs = labels["right lung"] | labels["left lung"]
    placed = sample.parameters["lesions"]
    assert 1 <= len(placed) <= 2 and lesion.sum() == sum(p["voxels"] for p in placed)
    assert lesion.any() and not (lesion & ~lungs).any()
    for p in placed:
        assert p["host"] in ("right lung", "left lung") and 20 <= p["mean_hu"] <= 60
        assert labels[p["host"]][tuple(p["centre_ijk"])] and all(4 <= a <= 12 for a in p["semi_axes_mm"])
    assert all(np.array_equal(sample.labels[n], labels[n]) for n in labels)  # hosts unchanged
    image = sample.volume.array
    assert np.array_equal(image[~lungs], volume.array[~lungs])  # nothing changes outside the host
    assert image[lesion].mean() > -300 > -700 > volume.array[lesion].mean()  # soft tissue in air-filled lung
    assert image[lesion].std() > 5  # textured, not a constant


def test_pathology_uses_named_hosts_and_needs_one(chest):
    volume, labels = chest
    sample = Pathology(hosts=("left lung",), max_lesions=3).apply(volume, labels, np.random.default_rng(0))
    assert not (sample.labels["lung nodule"] & ~labels["left lung"]).any()
    with pytest.raises(InputError, match="no label can host a 'lung nodule'.*'ribs'"):
        Pathology().apply(volume, {n: labels[n] for n in ("ribs", "tissue")}, np.random.default_rng(0))
    with pytest.raises(InputError, match="no label can host a 'liver lesion'"):
        Pathology(lesion="liver lesion").apply(volume, labels, np.random.default_rng(0))
    with pytest.raises(InputError, match="Unknown host structure 'liver'"):
        Pathology(hosts=("liver",)).apply(volume, labels, np.random.default_rng(0))
    with pytest.raises(InputError, match="no region at least 40.0 mm deep"):
        Pathology(radius_mm=(40.0, 50.0)).apply(volume, labels, np.random.default_rng(0))


# Clinical queries --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_every_query_reads_back_as_its_structure(name):
    modality = ENVIRONMENTS[name].modality or "ct"
    rng = np.random.default_rng(0)
    for structure in [*CHEST, "lung nodule"]:
        for seed in range(3):
            queries = clinical_queries(structure, name, rng, count=3)
            assert len(set(queries)) == 3, queries
            for query in queries:
                assert parse_report(query, modality).structure == structure, query


def test_queries_vary_synonyms_laterality_and_report_phrasing():
    rng = np.random.default_rng(1)
    spine = [q for _ in range(10) for q in clinical_queries("thoracic vertebral column", "low-dose-ct", rng)]
    assert any("spine" in q or "vertebra" in q for q in spine)  # synonyms
    assert any(q.startswith(("Low-dose CT:", "LDCT:", "Reduced-dose CT:")) for q in spine)  # report heading
    assert any("posterior thorax" in q for q in spine)  # the knowledge base's location
    ribs = [q for _ in range(10) for q in clinical_queries("ribs", "pediatric", rng, modality="mr")]
    assert any("bilateral" in q for q in ribs) and all("MRI" in q for q in ribs)
    nodule = clinical_queries("lung nodule", "pathology", rng, count=4, host="left lung", size_mm=12)
    for query in nodule:
        report = parse_report(query)
        assert report.structure == "lung nodule"
        if "left" in query:
            assert report.findings["laterality"] == "left"
    assert sum("left lung" in q for q in nodule) >= 2 and any(q.count("12 mm") == 1 for q in nodule)


def test_query_errors_name_the_bad_value():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="Unknown structure 'rigth lung'.*'right lung'"):
        clinical_queries("rigth lung", "low-dose-ct", rng)
    with pytest.raises(InputError, match="'ultrasound'.*'low-dose-ct'"):
        clinical_queries("right lung", "ultrasound", rng)
    with pytest.raises(InputError, match="count 9"):
        clinical_queries("right lung", "low-dose-ct", rng, count=9)


def test_llm_rewrites_are_kept_only_when_they_name_the_structure():
    rng = np.random.default_rng(0)
    prompts = []

    def faithful(prompt: str) -> str:
        prompts.append(prompt)
        return "Please delineate the left lung on this low-dose scan."

    assert clinical_queries("left lung", "low-dose-ct", rng, count=2, llm=faithful) == [
        "Please delineate the left lung on this low-dose scan."] * 2
    assert len(prompts) == 2 and all("'left lung'" in p for p in prompts)
    with pytest.warns(RuntimeWarning, match="does not name 'left lung'"):
        kept = clinical_queries("left lung", "low-dose-ct", rng, count=2, llm=lambda prompt: "Outline the liver.")
    assert all(parse_report(q).structure == "left lung" and "liver" not in q for q in kept)


def test_sample_queries_cover_every_label_of_a_pathology_sample(chest):
    volume, labels = chest
    sample = Pathology(max_lesions=1).apply(volume, labels, np.random.default_rng(4))
    queries = sample_queries(sample, np.random.default_rng(0), count=2)
    assert set(queries) == {*CHEST, "lung nodule"}
    host = sample.parameters["lesions"][0]["host"]
    for name, texts in queries.items():
        assert len(texts) == 2 and all(parse_report(t).structure == name for t in texts)
    assert all(host.split()[0] in q for q in queries["lung nodule"] if " in the " in q)
