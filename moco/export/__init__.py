"""Getting a pretrained backbone out of a checkpoint: Python loading and file export."""

from moco.export.backbone import backbone_state_dict, infer_resnet, load_backbone, load_backbone_and_config
from moco.export.formats import FORMATS, detectron2_name, export_backbone, torchvision_state_dict

__all__ = [
    "FORMATS", "backbone_state_dict", "detectron2_name", "export_backbone", "infer_resnet", "load_backbone",
    "load_backbone_and_config", "torchvision_state_dict",
]
