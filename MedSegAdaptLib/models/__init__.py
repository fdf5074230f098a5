"""SAM-family backbones: LiteMedSAM (default) and SAM ViT-B / MedSAM from a user checkpoint."""
from .backbone import SamBackbone
from .loading import BACKBONES, load_backbone

__all__ = ["BACKBONES", "SamBackbone", "load_backbone"]
