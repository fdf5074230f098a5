"""SAM-family backbones: LiteMedSAM (default) and SAM ViT-B / MedSAM from a user checkpoint."""
from .backbone import SamBackbone
from .loading import BACKBONES, fine_tunes_packaged_litemedsam, load_backbone

__all__ = ["BACKBONES", "SamBackbone", "fine_tunes_packaged_litemedsam", "load_backbone"]
