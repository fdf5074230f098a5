"""Imaging-environment simulators (MedSeg-Adapt): seeded, physically grounded variants of a real volume.

Each environment is a small frozen dataclass of documented parameters with an
``apply(volume, labels, rng)`` that returns a :class:`SimulatedSample`. Labels are
``{structure name: boolean (I, J, K) mask}`` on the volume's grid; environments that change the
geometry resample them with the image (nearest neighbour), the others return them unchanged.
All randomness comes from the ``numpy.random.Generator`` passed in (MONAI transforms are seeded
from it), so the same seed gives identical output.

=================== ==========================================================================
low-dose-ct         Poisson noise in the projection domain (radon, transmission, iradon)
high-res-ct         finer grid (SimpleITK), sharper reconstruction kernel and its extra noise
varying-field-mri   MR-like surrogate: tissue remapping, gamma, MONAI bias field, Rician noise
pediatric           anatomy shrunk with child-like proportions in a smaller field of view
pathology           synthetic lesions from the knowledge base inserted in a host structure
=================== ==========================================================================
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
from skimage.filters import gaussian, unsharp_mask
from skimage.transform import iradon, radon

from MedSegAdaptLib.core.errors import InputError, unknown_name
from MedSegAdaptLib.io.geometry import Geometry
from MedSegAdaptLib.io.modality import detect_modality
from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase, Structure, normalize

__all__ = [
    "AIR_HU",
    "ENVIRONMENTS",
    "MU_WATER_PER_CM",
    "Environment",
    "HighResCT",
    "Labels",
    "LowDoseCT",
    "Pathology",
    "Pediatric",
    "SimulatedSample",
    "VaryingFieldMRI",
    "environment",
    "environment_catalog",
    "names_site",
]

Labels = dict[str, np.ndarray]

#: Linear attenuation of water in 1/cm at the ~70 keV effective energy of a 120 kVp CT beam.
MU_WATER_PER_CM = 0.19
AIR_HU = -1000.0


@dataclass
class SimulatedSample:
    """One environment-specific variant of a volume.

    volume: the new image (float32, possibly on a new grid); labels: boolean masks on its grid;
    modality: 'ct' or 'mr'; environment: the environment's name; parameters: its parameters plus
    the values drawn for this sample (lesion centres, gamma, seeds, measured noise, ...).
    """

    volume: Volume
    labels: Labels
    modality: str
    environment: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Environment:
    """Base of the environments: a name, a one-line description and ``parameters()`` for listing.

    report_names: how a request or report names this kind of scan ('{modality}' is 'CT' or 'MRI');
    modality: the output modality, None where it is the input's.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    report_names: ClassVar[tuple[str, ...]]
    modality: ClassVar[str | None]

    def parameters(self) -> dict[str, Any]:
        """The parameters and their values, in declaration order."""
        return dataclasses.asdict(self)

    def apply(self, volume: Volume, labels: Labels, rng: np.random.Generator) -> SimulatedSample:
        """The variant of ``volume`` (I, J, K) and its ``labels`` (masks of the same shape)."""
        raise NotImplementedError

    def _check(self, condition: bool, message: str) -> None:
        if not condition:
            raise InputError(f"{self.name}: {message}")

    def _sample(self, array: np.ndarray, geometry: Geometry, labels: Labels, modality: str,
                **drawn: Any) -> SimulatedSample:
        volume = Volume(array.astype(np.float32), geometry, modality_hint=modality.upper())
        return SimulatedSample(volume, labels, modality, self.name, self.parameters() | drawn)


def _checked_labels(volume: Volume, labels: Labels, environment: str) -> Labels:
    """Copies of ``labels`` as boolean arrays; InputError when a mask's shape is not the volume's."""
    for name, mask in labels.items():
        if np.shape(mask) != volume.geometry.shape:
            raise InputError(
                f"{environment}: label {name!r} has shape {np.shape(mask)}; expected the volume's "
                f"shape {volume.geometry.shape}"
            )
    return {name: np.asarray(mask, dtype=bool).copy() for name, mask in labels.items()}


def _modality(volume: Volume) -> str:
    return detect_modality(volume.array, volume.modality_hint)[0]


def _require_ct(volume: Volume, environment: str) -> None:
    modality, reason = detect_modality(volume.array, volume.modality_hint)
    if modality != "ct":
        raise InputError(
            f"{environment} needs a CT volume in Hounsfield units; {volume.path or 'the volume'} "
            f"looks like {modality.upper()} ({reason})"
        )


# Resampling (SimpleITK) ----------------------------------------------------------------------------


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _resample(array: np.ndarray, source: Geometry, target: Geometry, transform: sitk.Transform,
              nearest: bool, default: float) -> np.ndarray:
    """``array`` on ``source`` resampled onto ``target``; ``transform`` maps target points to source points."""
    image = _to_sitk(array.astype(np.uint8 if nearest else np.float32), source)
    resampled = sitk.Resample(
        image, target.shape, transform, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        target.origin, target.spacing, target.direction, default,
    )
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)


def _resample_all(volume: Volume, labels: Labels, target: Geometry, transform: sitk.Transform,
                  background: float) -> tuple[np.ndarray, Labels]:
    """Image (linear) and labels (nearest neighbour) through the same transform onto ``target``."""
    image = _resample(volume.array, volume.geometry, target, transform, nearest=False, default=background)
    masks = {name: _resample(mask, volume.geometry, target, transform, nearest=True, default=0).astype(bool)
             for name, mask in labels.items()}
    return image, masks


def _centre(geometry: Geometry) -> np.ndarray:
    """LPS position of the grid's centre in millimetres."""
    return (geometry.ijk_to_lps() @ np.append((np.asarray(geometry.shape) - 1) / 2, 1.0))[:3]


# Low-dose CT ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LowDoseCT(Environment):
    """Low-dose CT: Poisson photon noise simulated in the projection domain, slice by slice.

    Each axial slice (array[:, :, k]) becomes linear attenuation mu = mu_water * (1 + HU/1000)
    (clipped at 0), is padded with air to a square and forward projected (``skimage.transform.radon``,
    parallel beam, ``angles`` views over 180 degrees, one detector bin per pixel). The transmitted
    counts ``I0 * exp(-line integral)`` are Poisson sampled, turned back into line integrals (zero
    counts count as one photon, photon starvation) and the difference to the clean line integrals is
    reconstructed by filtered back-projection (``iradon``, ramp filter). Only that reconstructed
    noise is added to the original HU, so the simulator's own discretisation never reaches the image.

    Since the source already carries full-dose noise, the added noise is that of
    ``I0 = photons_per_ray * d / (1 - d)`` for dose fraction d: variances add, so the result has
    the noise of ``photons_per_ray * d`` incident photons (Yu et al., Med Phys 2012). photons_per_ray
    is the full-dose count per view and detector bin. In-plane spacing is taken as isotropic (mean).
    """

    name: ClassVar[str] = "low-dose-ct"
    description: ClassVar[str] = "projection-domain Poisson noise at a fraction of the dose (radon / FBP)"
    report_names: ClassVar[tuple[str, ...]] = ("low-dose CT", "LDCT", "reduced-dose CT")
    modality: ClassVar[str | None] = "ct"

    dose_fraction: float = 0.25
    photons_per_ray: float = 1e5
    angles: int = 180
    mu_water_per_cm: float = MU_WATER_PER_CM

    def __post_init__(self) -> None:
        self._check(0 < self.dose_fraction <= 1, f"dose_fraction {self.dose_fraction} must be in (0, 1]")
        self._check(self.photons_per_ray > 0, f"photons_per_ray {self.photons_per_ray} must be positive")
        self._check(self.angles >= 2, f"angles {self.angles} must be at least 2")
        self._check(self.mu_water_per_cm > 0, f"mu_water_per_cm {self.mu_water_per_cm} must be positive")

    def apply(self, volume: Volume, labels: Labels, rng: np.random.Generator) -> SimulatedSample:
        """Noisy HU volume on the same grid; labels unchanged."""
        _require_ct(volume, self.name)
        labels = _checked_labels(volume, labels, self.name)
        noise = self.projection_noise(volume.array.astype(np.float64), volume.geometry.spacing, rng)
        return self._sample(volume.array + noise, volume.geometry, labels, "ct",
                            added_noise_std_hu=round(float(noise.std()), 2))

    def projection_noise(self, hu: np.ndarray, spacing: tuple[float, float, float],
                         rng: np.random.Generator) -> np.ndarray:
        """The reconstructed noise in HU, shape of ``hu`` (I, J, K); zeros at full dose."""
        noise = np.zeros(hu.shape)
        if self.dose_fraction == 1:
            return noise
        photons = self.photons_per_ray * self.dose_fraction / (1 - self.dose_fraction)
        pixel_cm = (spacing[0] + spacing[1]) / 20
        theta = np.linspace(0.0, 180.0, self.angles, endpoint=False)
        side = max(hu.shape[:2])
        pad = [((side - n) // 2, side - n - (side - n) // 2) for n in hu.shape[:2]]
        crop = tuple(slice(before, before + n) for (before, _), n in zip(pad, hu.shape[:2]))
        for k in range(hu.shape[2]):
            mu = np.clip(self.mu_water_per_cm * (1 + hu[:, :, k] / 1000), 0, None)
            line_integrals = radon(np.pad(mu, pad), theta, circle=False) * pixel_cm
            counts = rng.poisson(photons * np.exp(-line_integrals))
            noisy = -np.log(np.maximum(counts, 1) / photons)
            delta_mu = iradon((noisy - line_integrals) / pixel_cm, theta, output_size=side, circle=False,
                              filter_name="ramp")
            noise[:, :, k] = delta_mu[crop] * 1000 / self.mu_water_per_cm
        return noise


# Higher-resolution CT ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HighResCT(Environment):
    """Higher-resolution CT: a finer grid and a sharper reconstruction kernel, with its extra noise.

    The volume is resampled (SimpleITK, linear; labels nearest neighbour) to ``spacing *
    spacing_factors`` over the same physical extent (outer voxel edges kept, origin moved by half the
    change of spacing). White noise of ``noise_hu`` is added on the fine grid and the result is
    sharpened in-plane by unsharp masking (Gaussian radius ``sharpening_radius_mm``, gain
    ``sharpening_amount``), which boosts high frequencies and shapes the noise as a sharp (bone,
    lung) kernel does. Upsampling creates no new anatomical detail: this is the scanner's look, not
    its information.
    """

    name: ClassVar[str] = "high-res-ct"
    description: ClassVar[str] = "finer spacing, sharper reconstruction kernel and its higher noise"
    report_names: ClassVar[tuple[str, ...]] = ("high-resolution CT", "HRCT", "thin-section CT")
    modality: ClassVar[str | None] = "ct"

    spacing_factors: tuple[float, float, float] = (0.5, 0.5, 1.0)
    sharpening_radius_mm: float = 1.5
    sharpening_amount: float = 1.0
    noise_hu: float = 8.0

    def __post_init__(self) -> None:
        self._check(len(self.spacing_factors) == 3 and all(0 < f <= 1 for f in self.spacing_factors),
                    f"spacing_factors {self.spacing_factors} must be three values in (0, 1]")
        self._check(self.sharpening_radius_mm > 0 and self.sharpening_amount >= 0 and self.noise_hu >= 0,
                    "sharpening_radius_mm must be positive, sharpening_amount and noise_hu non-negative")

    def apply(self, volume: Volume, labels: Labels, rng: np.random.Generator) -> SimulatedSample:
        """HU volume on the finer grid; labels resampled with it."""
        _require_ct(volume, self.name)
        labels = _checked_labels(volume, labels, self.name)
        source = volume.geometry
        spacing = np.asarray(source.spacing) * np.asarray(self.spacing_factors)
        shape = np.maximum(1, np.round(np.asarray(source.shape) * source.spacing / spacing)).astype(int)
        shift = np.reshape(source.direction, (3, 3)) @ ((spacing - np.asarray(source.spacing)) / 2)
        target = Geometry(tuple(shape), tuple(spacing), tuple(np.asarray(source.origin) + shift), source.direction)
        image, masks = _resample_all(volume, labels, target, sitk.Transform(), float(volume.array.min()))
        image = image + rng.normal(0.0, self.noise_hu, image.shape).astype(np.float32)
        radius = (self.sharpening_radius_mm / spacing[0], self.sharpening_radius_mm / spacing[1], 0.0)
        image = unsharp_mask(image, radius=radius, amount=self.sharpening_amount, preserve_range=True)
        return self._sample(image, target, masks, "ct")


# Varying-field MRI ---------------------------------------------------------------------------------

#: CT number (HU) to T1-weighted-like signal in 0..1 for the CT-to-MR surrogate: air and cortical
#: bone dark, fluid darker than soft tissue, fat and fatty marrow bright.
_T1_FROM_HU = (
    (-1000.0, -900.0, -600.0, -120.0, -60.0, 0.0, 20.0, 60.0, 150.0, 300.0, 700.0, 1500.0),
    (0.0, 0.02, 0.05, 0.95, 0.8, 0.2, 0.35, 0.5, 0.6, 0.65, 0.1, 0.05),
)
_MR_SCALE = 1000.0


@dataclass(frozen=True)
class VaryingFieldMRI(Environment):
    """Varying-field MRI: tissue contrast, a smooth bias field and field-strength-dependent Rician noise.

    A CT input is smoothed in-plane (Gaussian, ``ct_smoothing_mm``, so CT quantum noise does not
    become speckle through the steep fat-to-water part of the lookup) and mapped to a T1-weighted-like
    signal by a fixed tissue lookup on HU (air and cortical bone dark, fluid darker than muscle, fat
    and marrow bright): a surrogate with MR-like contrast, not a real MR (no relaxation physics, no
    chemical shift or susceptibility). An MR input is scaled by its 99.5th percentile instead.
    Then: a contrast change ``signal ** gamma`` with gamma drawn from ``gamma_range``; a
    multiplicative bias field ``exp(Legendre polynomial)`` of degree ``bias_degree`` from MONAI's
    RandBiasField, its coefficients drawn from ``bias_coefficient_range`` at 1.5 T and scaled by
    B0/1.5 T (RF inhomogeneity grows with field strength); Rician noise (MONAI RandRicianNoise) of
    std ``mean foreground signal / (snr_per_tesla * B0)`` (SNR grows about linearly with B0).
    Output: modality 'mr', intensities >= 0 scaled to about 0..1000.
    """

    name: ClassVar[str] = "varying-field-mri"
    description: ClassVar[str] = "MR-like contrast with a bias field, gamma change and field-strength Rician noise"
    report_names: ClassVar[tuple[str, ...]] = ("MRI", "MR examination", "T1-weighted MRI")
    modality: ClassVar[str | None] = "mr"

    field_strength_t: float = 1.5
    bias_degree: int = 3
    bias_coefficient_range: tuple[float, float] = (-0.05, 0.05)
    gamma_range: tuple[float, float] = (0.7, 1.4)
    snr_per_tesla: float = 20.0
    ct_smoothing_mm: float = 3.0

    def __post_init__(self) -> None:
        self._check(self.ct_smoothing_mm >= 0, f"ct_smoothing_mm {self.ct_smoothing_mm} must be non-negative")
        self._check(self.field_strength_t > 0, f"field_strength_t {self.field_strength_t} must be positive")
        self._check(self.bias_degree >= 1, f"bias_degree {self.bias_degree} must be at least 1")
        low, high = self.gamma_range
        self._check(0 < low <= high, f"gamma_range {self.gamma_range} must be (low, high) with 0 < low <= high")
        self._check(self.bias_coefficient_range[0] <= self.bias_coefficient_range[1],
                    f"bias_coefficient_range {self.bias_coefficient_range} must be (low, high)")
        self._check(self.snr_per_tesla > 0, f"snr_per_tesla {self.snr_per_tesla} must be positive")

    def apply(self, volume: Volume, labels: Labels, rng: np.random.Generator) -> SimulatedSample:
        """MR-like volume (float32, >= 0) on the same grid; labels unchanged."""
        from monai.transforms import RandBiasField, RandRicianNoise
        from monai.utils import convert_to_numpy

        labels = _checked_labels(volume, labels, self.name)
        source = _modality(volume)
        if source == "ct":
            sigma = (*(self.ct_smoothing_mm / np.asarray(volume.geometry.spacing[:2])), 0.0)
            smooth = gaussian(volume.array.astype(np.float32), sigma=sigma, preserve_range=True)
            signal = np.interp(smooth, *_T1_FROM_HU)
        else:
            signal = np.clip(volume.array / max(float(np.percentile(volume.array, 99.5)), 1e-6), 0, 1)
        gamma = float(rng.uniform(*self.gamma_range))
        signal = _MR_SCALE * signal ** gamma
        scale = self.field_strength_t / 1.5
        bias = RandBiasField(degree=self.bias_degree, prob=1.0,
                             coeff_range=tuple(scale * c for c in self.bias_coefficient_range))
        bias_seed = int(rng.integers(2**31))
        bias.set_random_state(seed=bias_seed)
        field = convert_to_numpy(bias(np.ones((1, *signal.shape), np.float32)))[0]
        signal = signal * field
        bright = signal > 0.1 * signal.max()
        reference = float(signal[bright].mean()) if bright.any() else 0.0
        noise_std = reference / (self.snr_per_tesla * self.field_strength_t)
        rician = RandRicianNoise(prob=1.0, std=noise_std, sample_std=False)
        noise_seed = int(rng.integers(2**31))
        rician.set_random_state(seed=noise_seed)
        signal = convert_to_numpy(rician(signal[None].astype(np.float32)))[0]
        return self._sample(signal, volume.geometry, labels, "mr", source_modality=source, gamma=round(gamma, 4),
                            bias_field_range=(round(float(field.min()), 4), round(float(field.max()), 4)),
                            bias_seed=bias_seed, noise_std=round(noise_std, 3), noise_seed=noise_seed)


# Pediatric -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pediatric(Environment):
    """Pediatric imaging: smaller anatomy with child-like proportions in a smaller field of view.

    The anatomy is scaled about the volume's centre by ``scale`` along the patient axes
    (left-right, anterior-posterior, superior-inferior): the defaults make a rounder chest (a child's
    thorax is nearly as deep as it is wide) and a shorter trunk, roughly a 5-year-old against an adult.
    The output grid keeps the matrix size and direction, its field of view reduced by
    ``field_of_view`` along the grid's I, J, K axes (spacing scaled by it), as pediatric protocols
    reconstruct a smaller field of view. Image (linear) and labels (nearest neighbour) go through one
    SimpleITK transform; space outside the source is air (-1000 HU) for CT, the minimum for MR.
    Label volumes in mm^3 shrink by the product of ``scale`` while the anatomy stays inside the field
    of view (``field_of_view`` >= ``scale`` along each axis keeps it there).
    """

    name: ClassVar[str] = "pediatric"
    description: ClassVar[str] = "smaller anatomy, child-like proportions and a smaller field of view"
    report_names: ClassVar[tuple[str, ...]] = ("pediatric {modality}", "paediatric {modality}",
                                               "{modality} of a child")
    modality: ClassVar[str | None] = None

    scale: tuple[float, float, float] = (0.65, 0.75, 0.6)
    field_of_view: tuple[float, float, float] = (0.8, 0.8, 0.6)

    def __post_init__(self) -> None:
        for label, values in (("scale", self.scale), ("field_of_view", self.field_of_view)):
            self._check(len(values) == 3 and all(0 < v <= 1 for v in values),
                        f"{label} {values} must be three values in (0, 1]")

    def apply(self, volume: Volume, labels: Labels, rng: np.random.Generator) -> SimulatedSample:
        """Volume and labels on the smaller grid (same shape); ``rng`` is not used (deterministic)."""
        labels = _checked_labels(volume, labels, self.name)
        modality = _modality(volume)
        source = volume.geometry
        centre = _centre(source)
        spacing = np.asarray(source.spacing) * np.asarray(self.field_of_view)
        axes = np.reshape(source.direction, (3, 3))
        origin = centre - axes @ (spacing * (np.asarray(source.shape) - 1) / 2)
        target = Geometry(source.shape, tuple(spacing), tuple(origin), source.direction)
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(np.diag(1 / np.asarray(self.scale)).ravel().tolist())
        transform.SetCenter(centre.tolist())
        background = AIR_HU if modality == "ct" else float(volume.array.min())
        image, masks = _resample_all(volume, labels, target, transform, background)
        return self._sample(image, target, masks, modality)


# Pathology -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pathology(Environment):
    """Specific pathology: 1 to ``max_lesions`` synthetic lesions of a knowledge-base lesion.

    Host structures are the labels the knowledge base places the lesion in (one of its site words,
    e.g. 'lung' for 'lung nodule', names the label) unless ``hosts`` names them. Each lesion is an
    irregular ellipsoid: semi-axes drawn in ``radius_mm``, the surface displaced by a smooth random
    field of relative amplitude ``irregularity``, centred where the host (minus earlier lesions) is
    at least the largest semi-axis deep, and clipped to the host, so it lies wholly inside it. Its
    intensity is a mean drawn from ``lesion_hu`` (default: the HU range in the knowledge base's CT
    texture text, e.g. 20-60 HU for a solid lung nodule) plus Gaussian-correlated texture
    (``texture_std_hu``, correlation length ``texture_scale_mm``), blended with a soft edge
    (``edge_mm``) that stays within the host. The lesion masks become one new label named after the
    knowledge-base structure (added to a label of that name if present); host masks are unchanged
    (they still include the lesion, as organ segmentations usually include their lesions). CT only.
    """

    name: ClassVar[str] = "pathology"
    description: ClassVar[str] = "synthetic lesions from the knowledge base with known masks, inside a host structure"
    report_names: ClassVar[tuple[str, ...]] = ("CT", "contrast-enhanced CT", "follow-up CT")
    modality: ClassVar[str | None] = "ct"

    lesion: str = "lung nodule"
    hosts: tuple[str, ...] | None = None
    max_lesions: int = 2
    radius_mm: tuple[float, float] = (4.0, 12.0)
    lesion_hu: tuple[float, float] | None = None
    irregularity: float = 0.3
    texture_std_hu: float = 15.0
    texture_scale_mm: float = 3.0
    edge_mm: float = 1.5

    def __post_init__(self) -> None:
        kb = KnowledgeBase.load()
        structure = kb.structure(self.lesion)
        lesions = [s.name for s in kb.structures if s.category == "lesion"]
        self._check(structure.category == "lesion",
                    f"{structure.name!r} is not a lesion (category {structure.category}); expected one of {lesions}")
        object.__setattr__(self, "lesion", structure.name)
        self._check(self.max_lesions >= 1, f"max_lesions {self.max_lesions} must be at least 1")
        self._check(0 < self.radius_mm[0] <= self.radius_mm[1], f"radius_mm {self.radius_mm} must be (low, high) > 0")
        self._check(0 <= self.irregularity < 1, f"irregularity {self.irregularity} must be in [0, 1)")
        self._check(min(self.texture_std_hu, self.texture_scale_mm, self.edge_mm) >= 0,
                    "texture_std_hu, texture_scale_mm and edge_mm must be non-negative")
        if self.lesion_hu is None:
            self._check(self.intensity_range() is not None,
                        f"the knowledge base gives no HU range for {self.lesion!r}; pass lesion_hu=(low, high)")

    @property
    def structure(self) -> Structure:
        """The lesion's knowledge-base entry."""
        return KnowledgeBase.load().structure(self.lesion)

    def parameters(self) -> dict[str, Any]:
        """The parameters, lesion_hu filled in from the knowledge base when not given."""
        return super().parameters() | {"lesion_hu": self.intensity_range()}

    def intensity_range(self) -> tuple[float, float] | None:
        """``lesion_hu``, else the first 'a-b HU' range of the lesion's CT texture text, else None."""
        if self.lesion_hu is not None:
            return tuple(float(v) for v in self.lesion_hu)
        ranges = self.structure.hu_ranges()
        return ranges[0] if ranges else None

    def host_names(self, labels: Labels) -> list[str]:
        """Labels that can host the lesion: ``hosts`` if given, else those named by a site word."""
        if self.hosts is not None:
            missing = [h for h in self.hosts if h not in labels]
            if missing:
                raise unknown_name("host structure", missing[0], labels, f"the labels given to {self.name}")
            return list(self.hosts)
        kb = KnowledgeBase.load()
        hosts = []
        for name in labels:
            try:
                terms = kb.structure(name).terms
            except InputError:
                continue
            if any(names_site(self.structure, term) for term in terms):
                hosts.append(name)
        return hosts

    def apply(self, volume: Volume, labels: Labels, rng: np.random.Generator) -> SimulatedSample:
        """HU volume with lesions; labels plus the lesion label. InputError when no host is present."""
        _require_ct(volume, self.name)
        labels = _checked_labels(volume, labels, self.name)
        hosts = [h for h in self.host_names(labels) if labels[h].any()]
        if not hosts:
            sites = ", ".join(self.structure.site_terms) or "none in the knowledge base"
            raise InputError(
                f"{self.name}: no label can host a {self.lesion!r} (site words: {sites}); labels: "
                f"{', '.join(repr(n) for n in labels) or 'none'}; pass hosts=(...) to name one"
            )
        image = volume.array.astype(np.float32)
        lesions = labels.get(self.lesion, np.zeros(volume.geometry.shape, bool))
        placed = []
        for _ in range(int(rng.integers(1, self.max_lesions + 1))):
            host = hosts[int(rng.integers(len(hosts)))]
            drawn = self._insert(image, lesions, labels[host] & ~lesions, volume.geometry.spacing, rng)
            if drawn is None:
                continue
            placed.append({"host": host, **drawn})
        if not placed:
            raise InputError(
                f"{self.name}: {', '.join(hosts)} has no region at least {self.radius_mm[0]} mm deep "
                f"for a {self.lesion!r}; lower radius_mm"
            )
        return self._sample(image, volume.geometry, labels | {self.lesion: lesions}, "ct", lesions=placed)

    def _insert(self, image: np.ndarray, lesions: np.ndarray, free: np.ndarray, spacing: tuple[float, ...],
                rng: np.random.Generator) -> dict[str, Any] | None:
        """Insert one lesion inside ``free`` into ``image`` and ``lesions`` (in place); what was drawn."""
        spacing_array = np.asarray(spacing)
        depth = _depth_mm(free, spacing)
        deepest = float(depth.max())
        if deepest < self.radius_mm[0]:
            return None
        semi_axes = rng.uniform(self.radius_mm[0], min(self.radius_mm[1], deepest), 3)
        candidates = np.argwhere(depth >= semi_axes.max())
        centre = candidates[int(rng.integers(len(candidates)))]
        half = np.ceil((semi_axes * (1 + self.irregularity) + 2 * self.edge_mm) / spacing_array).astype(int)
        box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, free.shape))
        offsets = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) - c for s, c in zip(box, centre)),
                                       indexing="ij"), axis=-1) * spacing_array
        distance = np.sqrt(((offsets / semi_axes) ** 2).sum(axis=-1))
        shape = distance.shape
        wobble = gaussian(rng.standard_normal(shape), sigma=semi_axes / spacing_array / 2, preserve_range=True)
        wobble /= max(float(np.abs(wobble).max()), 1e-6)
        inside = (distance <= 1 + self.irregularity * wobble) & free[box]
        texture = gaussian(rng.standard_normal(shape), sigma=self.texture_scale_mm / spacing_array,
                           preserve_range=True)
        texture *= self.texture_std_hu / max(float(texture.std()), 1e-6)
        mean_hu = float(rng.uniform(*self.intensity_range()))
        weight = gaussian(inside.astype(float), sigma=self.edge_mm / spacing_array, preserve_range=True)
        weight = np.where(inside, np.maximum(weight, 0.5), weight) * free[box]
        image[box] = (1 - weight) * image[box] + weight * (mean_hu + texture)
        lesions[box] |= inside
        return {
            "centre_ijk": [int(c) for c in centre],
            "semi_axes_mm": [round(float(a), 2) for a in semi_axes],
            "mean_hu": round(mean_hu, 1),
            "voxels": int(inside.sum()),
        }


def names_site(lesion: Structure, term: str) -> bool:
    """True when ``term`` contains one of the lesion's site words ('right lung' for 'lung nodule')."""
    return any(re.search(rf"\b{re.escape(normalize(site))}\b", normalize(term)) for site in lesion.site_terms)


def _depth_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the mask's nearest border voxel (0 on the border and
    outside): a ball of that radius around the voxel stays within the mask."""
    image = _to_sitk(mask.astype(np.uint8), Geometry(mask.shape, spacing, (0, 0, 0), np.eye(3)))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=True, squaredDistance=False,
                                            useImageSpacing=True, backgroundValue=0)
    return np.clip(sitk.GetArrayFromImage(distance).transpose(2, 1, 0), 0, None)


# Registry ------------------------------------------------------------------------------------------

ENVIRONMENTS: dict[str, type[Environment]] = {
    cls.name: cls for cls in (LowDoseCT, HighResCT, VaryingFieldMRI, Pediatric, Pathology)
}


def environment(name: str, **overrides: Any) -> Environment:
    """The environment called ``name`` (e.g. 'low-dose-ct') with ``overrides`` of its defaults.

    Unknown names and parameters raise InputError listing the known ones.
    """
    key = name.strip().lower()
    if key not in ENVIRONMENTS:
        raise unknown_name("environment", name, ENVIRONMENTS, "MedSeg-Adapt's environments")
    cls = ENVIRONMENTS[key]
    known = [f.name for f in dataclasses.fields(cls)]
    for parameter in overrides:
        if parameter not in known:
            raise unknown_name("parameter", parameter, known, f"environment {key!r}")
    return cls(**overrides)


def environment_catalog() -> list[dict[str, Any]]:
    """Every environment as {"name", "description", "parameters": its defaults}, in ENVIRONMENTS' order."""
    return [{"name": name, "description": cls.description, "parameters": cls().parameters()}
            for name, cls in ENVIRONMENTS.items()]
