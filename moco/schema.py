"""The run's settings as plain dataclasses: one section each for model, method, data, optim, train,
finetune (what transfer starts from: fine-tuning and detection) and detect (the detector).

Only the schema and its defaults live here. Presets are YAML files in ``moco/presets``; reading files,
``--set`` overrides and validation are in :mod:`moco.config`; each choice list (dictionaries, heads,
augmentations, pipelines, optimisers) belongs to the registry of the module that implements it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # resnet18/34/50/101/152, wide_resnet50_2/101_2, vit_tiny/small/base, torchvision:NAME,
    # timm:NAME or custom:MODULE.CLASS (any backbone; see moco.models.generic)
    width: int = 64  # ResNets: channels of the first stage; 64 is torchvision's
    cifar_stem: bool = False  # ResNets: 3x3 stride-1 conv1 and no max-pool (CIFAR demo)
    head: str = "linear"  # linear (v1), mlp (v2) or v3 (MLP with BN: 2 layers for ResNets, 3 for ViTs)
    dim: int = 128  # the embedding q and k live in (the paper's 128)
    mlp_dim: int = 0  # hidden width of the MLP heads; 0 = the backbone's feature dim (v2), 4096 (v3)
    bn_splits: int = 1  # SplitBatchNorm groups for single-device shuffle BN; 1 = plain BN
    patch_size: int = 16  # ViTs
    stop_grad_conv1: bool = False  # ViTs: freeze the random patch projection (MoCo v3)


@dataclass
class MethodConfig:
    K: int = 65536  # queue size: negatives per query (the paper's 65,536 on ImageNet; keep it well under the data
    # set's size: the CIFAR demo keeps 4,096 for 50,000 images)
    m: float = 0.999  # key encoder momentum: theta_k <- m theta_k + (1 - m) theta_q (the paper's 0.999; 0.99 for
    # runs of thousands of steps, the CIFAR demo's)
    T: float = 0.07  # InfoNCE temperature (v1's 0.07; v2's 0.2)
    symmetric: bool = False  # both views act as the query once, both key sets enqueued (the demo's option; about
    # 1.6x a step's cost)
    shuffle_bn: bool = True  # shuffle the key batch across BatchNorm groups or processes, so that BN statistics
    # cannot leak the positive (paper, 3.3); off only to show the leak
    dictionary: str = "moco"  # moco (queue + momentum encoder), end_to_end (the batch), memory_bank (Wu et al.),
    # or v3 (MoCo v3: momentum encoder, the batch's keys, predictor, symmetric loss)
    m_schedule: str = "constant"  # constant, or cosine from m up to 1 (v3)
    bank_m: float = 0.5  # memory bank: v_i <- normalize(bank_m * v_i + (1 - bank_m) * q_i)


@dataclass
class DataConfig:
    image_size: int = 224  # side of the views the network sees: training views (unless train_size) and evaluation
    train_size: int = 0  # side of the training views (0 = image_size); evaluation always uses image_size
    ramp_size: int = 0  # progressive resizing: training views start at this side (0 = off) and grow
    ramp_epochs: list[int] = field(default_factory=lambda: [0, 0])  # ... linearly from epoch [0] to [1] up to
    # view_size, in steps of 4 px (FFCV's low-res-first schedule: cheap early epochs, full size at the end)
    augmentation: str = "v1"  # v1, v2 (adds blur, jitter p=0.8), cifar (v2 without blur),
    # byol (v3: blur 1.0 / 0.1 and solarize 0 / 0.2 in the two views) or byol-cifar (byol without blur)
    crop_min_scale: float = 0.2  # random resized crop's smallest area fraction (the demo's torchvision default: 0.08)
    normalize: str = "imagenet"  # channel mean/std inputs are normalised by, training and evaluation alike:
    # imagenet (main_moco.py) or cifar10 (the CIFAR-10 demo); the registry moco.data.augment.NORMALIZATIONS
    pipeline: str = "cached"  # cached: decode once to uint8, batched tensor aug; per_image: PIL in workers;
    # device: workers read files, the training device decodes JPEGs (nvJPEG on CUDA) and augments the batch
    cache_size: int = 0  # side of cached images; 0 = image_size for <=64 px, else 1.15 * image_size
    cache_dir: str = ""  # default: $MOCO_CACHE or ~/.cache/momentum-contrast
    workers: int = 2  # decoding processes (DataLoader workers; the cached pipeline decodes with them once)
    max_images: int = 0  # 0 = all; else a deterministic subset
    strict: bool = False  # fail on the first unreadable image instead of skipping it
    samples_per_epoch: int = 0  # WebDataset shards: samples that make an epoch (0: count the local shards; a
    # stream of unknown length, a URL, needs it)
    shuffle_buffer: int = 2000  # WebDataset shards: samples each reader (a loader worker) mixes in its buffer

    @property
    def view_size(self) -> int:
        """Side of the training views: ``train_size``, or ``image_size`` when that is 0."""
        return self.train_size or self.image_size


@dataclass
class OptimConfig:
    epochs: int = 200  # length in epochs (with optim.time_budget: the schedules' length, fitted to the steps)
    batch_size: int = 256  # images per step, all processes together (the paper's 256)
    lr: float = 0.03  # base learning rate (the paper's 0.03 at batch 256; scale it with the batch)
    momentum: float = 0.9  # SGD momentum (the paper's)
    nesterov: bool = False  # SGD: Nesterov momentum (the fine-tuning recipe)
    weight_decay: float = 1e-4  # the paper's 1e-4 on ImageNet; the CIFAR demo's 5e-4 for small data
    schedule: str = "step"  # step, cosine, or poly ((1 - progress) ** 0.9: DeepLab's, segmentation's)
    milestones: list[int] = field(default_factory=lambda: [120, 160])  # step schedule: lr x 0.1 at these epochs
    # (the paper's 120 and 160 of 200)
    warmup_epochs: float = 0.0  # linear lr warm-up from 0 over this many epochs (v3's 40; large batches)
    optimizer: str = "sgd"  # sgd, lars or adamw
    scale_lr: bool = False  # lr = optim.lr x batch_size / 256 (the v3 recipes)
    time_budget: float = 0.0  # seconds of wall time to train for (start-up and final kNN included) instead of
    # `epochs` epochs; the schedules then run over the planned steps, `epochs` long in schedule epochs


@dataclass
class TrainConfig:
    seed: int = 0  # seeds the network's init, the augmentation and the data order: the same seed, the same run
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "auto"  # auto (bf16 where the device runs it natively, else fp32), bf16, fp16 (CUDA) or fp32
    channels_last: bool = True  # NHWC tensors: faster convolutions on CPUs with oneDNN and on tensor-core GPUs
    compile: bool = False  # torch.compile the encoders (slow first steps; pays off on long runs)
    log_every: int = 20  # steps between metrics.jsonl records
    loggers: list[str] = field(default_factory=list)  # experiment trackers beside TensorBoard: mlflow, wandb
    checkpoint_every: int = 10  # epochs between kept checkpoint_{epoch:04d}.pt files
    eval_every: int = 1  # epochs between end-of-epoch evaluations (pretraining's kNN monitor, fine-tuning's test
    # top-1, detection's COCO AP), when there is something to evaluate on; 0 = only after the last epoch
    knn_k: int = 200  # the kNN monitor's neighbours (InstDisc's 200)
    knn_t: float = 0.1  # the kNN monitor's vote temperature: each neighbour weighs exp(similarity / knn_t)
    knn_features: list[str] = field(default_factory=lambda: ["backbone"])  # what the monitor scores: backbone
    # and/or head (the projection head's output, as the CIFAR-10 demo); the first is knn_top1, others knn_head_top1


@dataclass
class FinetuneConfig:
    """``moco finetune``: the network, the new classifier ``fc`` on it, and the labels it learns from. The lr,
    schedule, batch and length are ``optim``'s; the view side and normalisation are ``data``'s. ``moco detect``
    starts from the same ``init``, ``checkpoint``, ``bn`` and ``backbone_lr``."""

    labels: str = "100%"  # a class-balanced subset of train/: a fraction (1%, 10%, 100%) or N images per class
    labels_seed: int = 0  # the subset's draw (kept apart from train.seed, so seeds of a comparison share labels)
    labels_file: str = ""  # a labels.txt of an earlier run (paths under train/): the same images, no draw
    init: str = "checkpoint"  # checkpoint (a pretrained backbone), supervised (one trained with labels), random
    checkpoint: str = ""  # the checkpoint the backbone came from (empty for random init without one)
    backbone_lr: float = 1.0  # the backbone's lr as a fraction of optim.lr (the new classifier's)
    bn: str = "train"  # train: BatchNorm normalises with batch statistics and learns (paper, 4.2); frozen: the
    # pretrained running statistics and affine parameters are kept (eval-mode BN)
    label_smoothing: float = 0.0  # cross-entropy label smoothing of the new classifier (0: none)
    min_epoch_steps: int = 20  # an epoch passes over a small labelled set as often as it takes to make this
    # many steps, so checkpoints and evaluations keep a sensible rhythm at 1% of labels


@dataclass
class DetectConfig:
    """``moco detect``: torchvision's Faster R-CNN (Mask R-CNN with segmentations) with a feature pyramid over
    the backbone's ResNet stages. Lengths, lr and batch (images per step) are ``optim``'s."""

    min_size: list[int] = field(default_factory=list)  # training images' shorter side, one drawn per image
    # (Detectron2's INPUT.MIN_SIZE_TRAIN); the last also at test. Empty: the training images' median shorter side
    max_size: int = 0  # the longer side's cap; 0: 1333/800 of the largest min_size (Detectron2's ratio)
    levels: list[int] = field(default_factory=list)  # ResNet stages (1-4) under the pyramid; empty: those of
    # stride 2 or more (all four with the ImageNet stem; 2-4 with the CIFAR stem, whose layer1 is full size)
    fpn_channels: int = 0  # the pyramid's width; 0: half the last stage's channels, at most 256
    anchor_scale: float = 8.0  # anchors of 8 and 8 x sqrt(2) strides a side at each level
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width of the anchors
    rpn_per_image: int = 256  # anchors sampled per image for the RPN's loss (Detectron2's RPN.BATCH_SIZE_PER_IMAGE)
    rois_per_image: int = 512  # RoIs sampled per image for the box head (Detectron2's BATCH_SIZE_PER_IMAGE)
    rpn_post_nms: int = 2000  # training proposals kept per image after the RPN's NMS (torchvision's 2000;
    # Detectron2's FPN configs keep 1000). At test, torchvision's 1000
    roi_sampling: int = 2  # RoIAlign's sampling points per bin side (torchvision's 2; 0: adaptive, Detectron2's)
    box_head_dim: int = 0  # the two-layer box head's width; 0: 4 x fpn_channels (1024 over 256, as torchvision)
    masks: str = "auto"  # auto: Mask R-CNN when the training annotations carry segmentations; off: boxes only
    keypoints: str = "auto"  # auto: Keypoint R-CNN when the categories name keypoints (then no masks); off
    keypoint_head: list[int] = field(default_factory=lambda: [512] * 8)  # the keypoint head's 3 x 3 conv widths
    # (torchvision's KeypointRCNNHeads: eight of 512)
    oks_sigmas: list[float] = field(default_factory=list)  # each keypoint's OKS sigma for keypoint AP; empty: the
    # annotation file's (a category's "sigmas"), or COCO's person sigmas for its 17 keypoints
    flip: float = 0.5  # horizontal flip probability
    cache_mb: int = 1024  # a set (training or validation) whose images fit in this many MB decoded is decoded
    # once and kept in memory, read without loader workers; larger sets, or 0, read the files every epoch


@dataclass
class SegmentConfig:
    """``moco segment``: a torchvision segmentation head (DeepLabV3's ASPP or FCN's) on the backbone's last ResNet
    stage, dilated to ``output_stride``. Lengths, lr and batch are ``optim``'s."""

    head: str = "deeplabv3"  # deeplabv3 (torchvision's DeepLabHead, ASPP) or fcn (torchvision's FCNHead)
    output_stride: int = 8  # the last stage's stride at most: later stride-2 stages are dilated until it holds
    # (DeepLabV3's 8 or 16); a network already at or under it (the CIFAR stem: 8) is left as it is
    atrous_rates: list[int] = field(default_factory=lambda: [12, 24, 36])  # ASPP's rates (DeepLabV3's at stride 8)
    num_classes: int = 0  # classes of the label maps (0..N-1); 0: from the data (the mapping file's, COCO's
    # categories + background, or the largest value in the training maps + 1)
    ignore_index: int = 255  # the label value that is not scored nor trained on (VOC's borders)
    base_size: int = 0  # the shorter side the random scale is relative to; 0: the training images' median
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random resize range, times base_size
    crop_size: int = 0  # the square training crop (padded with ignored pixels where the image is smaller);
    # 0: base_size
    flip: float = 0.5  # horizontal flip probability
    image_suffix: str = ""  # removed from image names before pairing them with label maps (Cityscapes':
    mask_suffix: str = ""  # _leftImg8bit and _gtFine_labelIds); label maps pair with images by folder and stem
    cache_mb: int = 1024  # a set whose images and maps fit in this many MB decoded is kept decoded in memory and
    # read without loader workers; larger sets, or 0, read the files every epoch


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
