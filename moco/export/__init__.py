"""Getting a pretrained backbone out of a checkpoint: Python loading and file export."""

from moco.export.backbone import backbone_state_dict, load_backbone, load_backbone_and_config

__all__ = ["backbone_state_dict", "load_backbone", "load_backbone_and_config"]
