"""MoCo v3: loss, predictor, momentum schedule, ViT (sin-cos, frozen patch projection), LARS, BYOL views, export."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import tiny_config
from torch import nn

from moco.config import ConfigError, resolve
from moco.data.augment import SOLARIZE_THRESHOLD, apply_params, sample_params, view_recipes
from moco.export import export_backbone, load_backbone_and_config
from moco.methods import MoCoV3, build_mlp, build_moco
from moco.models.resnet import build_resnet
from moco.models.vit import build_vit, sincos_pos_embed
from moco.optim import LARS, build_optimizer
from moco.schedules import momentum_at
from moco.tasks.pretrain import build_training, contrastive_step
from moco.training.checkpoint import FORMAT
from moco.training.loop import train_step
from moco.training.task import StepModule


def tiny_v3(T: float = 0.5) -> MoCoV3:
    torch.manual_seed(0)
    enc = build_resnet("resnet18", width=4, cifar_stem=True, num_classes=8)
    enc.fc = build_mlp(2, 32, 16, 8)
    return MoCoV3(enc, build_mlp(2, 8, 16, 8, last_bn=False), T=T, m=0.9)


def test_v3_loss_matches_hand_computation():
    model = tiny_v3(T=0.5)
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    enc, pred = copy.deepcopy(model.encoder_q), copy.deepcopy(model.predictor)  # before the step
    loss, logits = model(x1, x2)
    with torch.no_grad():
        q1, q2 = (F.normalize(pred(enc(x)), dim=1) for x in (x1, x2))
        k1, k2 = (F.normalize(enc(x), dim=1) for x in (x1, x2))  # encoder_k == encoder_q at the start
    expected = 0.0
    for q, k in ((q1, k2), (q2, k1)):
        sim = (q @ k.t() / 0.5).tolist()
        for i in range(6):  # -log softmax of the diagonal, by hand
            expected += (-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i]))) / 6 * (2 * 0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert logits.shape == (6, 6)  # positive first, then the N - 1 other keys of the batch
    assert torch.allclose(logits[:, 0], (q1 * k2).sum(1) / 0.5, atol=1e-5)


def test_v3_predictor_only_on_the_query_side_and_no_gradient_to_keys():
    model = tiny_v3()
    assert not any("predictor" in k for k in model.encoder_k.state_dict())
    assert model.encoder_k.state_dict().keys() == model.encoder_q.state_dict().keys()
    loss, _ = model(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    loss.backward()
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    # the optimiser trains the query encoder and the predictor, nothing else
    cfg = resolve("cifar10-v3-cpu")
    opt = build_optimizer(cfg, model)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in [*model.encoder_q.parameters(), *model.predictor.parameters()]}


def test_v3_key_encoder_follows_the_query_encoder_by_momentum_before_the_keys():
    """Each forward first moves encoder_k to m * encoder_k + (1 - m) * encoder_q (parameters only), then encodes
    the keys with it: the authors' order. Without the update the keys would come from the initial weights."""
    model = tiny_v3()
    model.set_momentum(0.75)
    with torch.no_grad():
        for p in model.encoder_q.parameters():  # a query encoder that has moved away from the key encoder
            p.add_(0.1 * torch.randn_like(p))
    q = {k: v.clone() for k, v in model.encoder_q.named_parameters()}
    k0 = {k: v.clone() for k, v in model.encoder_k.named_parameters()}
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    _, logits = model(x1, x2)
    for name, p in model.encoder_k.named_parameters():
        assert torch.allclose(p, 0.75 * k0[name] + 0.25 * q[name], atol=1e-6), name
    with torch.no_grad():  # the keys of this step came from the updated key encoder
        q1 = F.normalize(model.predictor(model.encoder_q(x1)), dim=1)
        k2 = F.normalize(model.encoder_k(x2), dim=1)
    assert torch.allclose(logits[:, 0], (q1 * k2).sum(1) / model.T, atol=1e-5)


def test_momentum_schedule_endpoints():
    cfg = resolve("cifar10-v3-cpu", overrides=["method.m=0.99", "optim.epochs=10"])
    assert momentum_at(cfg, 0.0) == pytest.approx(0.99)
    assert momentum_at(cfg, 5.0) == pytest.approx(0.995)
    assert momentum_at(cfg, 10.0) == pytest.approx(1.0)
    assert all(momentum_at(cfg, e) <= momentum_at(cfg, e + 0.5) for e in range(10))
    const = resolve("cifar10-cpu")
    assert momentum_at(const, 0.0) == momentum_at(const, 7.3) == const.method.m


def test_lars_excludes_biases_and_norms_from_decay_and_scaling():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([w, b], lr=0.1, weight_decay=0.5, momentum=0.9, trust_coefficient=0.01)
    w.grad, b.grad = torch.tensor([[1.0, 0.0]]), torch.tensor([2.0, 2.0])
    opt.step()
    dp = torch.tensor([[1.0, 0.0]]) + 0.5 * torch.tensor([[3.0, 4.0]])  # grad + wd * w
    q = 0.01 * 5.0 / dp.norm()
    assert torch.allclose(w, torch.tensor([[3.0, 4.0]]) - 0.1 * q * dp)
    assert torch.allclose(b, torch.tensor([1.0, -1.0]) - 0.1 * torch.tensor([2.0, 2.0]))  # plain SGD step
    w.grad, b.grad = torch.zeros(1, 2), torch.zeros(2)
    b_before = b.detach().clone()
    opt.step()  # momentum carries the previous update
    assert torch.allclose(b, b_before - 0.1 * 0.9 * torch.tensor([2.0, 2.0]))


def test_sincos_position_embedding():
    pe = sincos_pos_embed(4, 16)
    assert pe.shape == (1, 17, 16)
    assert torch.equal(pe[0, 0], torch.zeros(16))  # class token
    # patch (i, j): sin/cos of i in the first half, of j in the second (the authors' layout)
    assert pe[0, 1 + 2 * 4 + 3, 0].item() == pytest.approx(math.sin(2.0))
    assert pe[0, 1 + 2 * 4 + 3, 8].item() == pytest.approx(math.sin(3.0))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(4, 10)


def test_vit_frozen_patch_projection_and_position_embedding_never_change(tmp_path):
    cfg = resolve("cifar10-v3-cpu", overrides=[
        "model.arch=vit_tiny", "model.patch_size=4", "model.stop_grad_conv1=true", "data.image_size=16",
        "model.mlp_dim=32", "model.dim=16", "optim.optimizer=adamw", "optim.lr=1e-3", "optim.weight_decay=0.1"])
    torch.manual_seed(0)
    model, opt, scaler = build_training(cfg, torch.device("cpu"))
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if k.endswith(("conv_proj.weight", "conv_proj.bias", "pos_embedding"))}
    assert len(frozen) == 6  # both encoders
    blocks = model.encoder_q.encoder.layers[0].mlp[0].weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        train_step(StepModule(model, contrastive_step), opt, scaler,
                   (torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), None), gen, "fp32", torch.device("cpu"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not torch.equal(model.encoder_q.encoder.layers[0].mlp[0].weight, blocks)  # the rest trains
    assert torch.allclose(state["encoder_q.encoder.pos_embedding"], sincos_pos_embed(4, 192))


def test_vit_export_loads_strictly_into_torchvision(tmp_path):
    cfg = resolve("imagenet-v3-vit-s", overrides=["model.arch=vit_tiny", "model.patch_size=4", "data.image_size=32"])
    model = build_moco(cfg)
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "epoch": 1, "step": 1, "model": model.state_dict()},
               tmp_path / "ck.pt")
    out = export_backbone(tmp_path / "ck.pt", "torchvision", tmp_path / "vit.pth")
    state = torch.load(out, weights_only=True)
    net = torchvision.models.VisionTransformer(32, 4, 12, 3, 192, 768)
    net.heads = nn.Identity()
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    backbone, _ = load_backbone_and_config(tmp_path / "ck.pt")
    with torch.no_grad():
        assert torch.allclose(net(x), backbone.forward_features(x), atol=1e-5)
    with pytest.raises(ValueError, match="detectron2"):
        export_backbone(tmp_path / "ck.pt", "detectron2", tmp_path / "vit.pkl")


def test_vit_base_matches_torchvision_vit_b_16_keys():
    ours = {k for k in build_vit("vit_base", 224, 16).state_dict() if not k.startswith("fc.")}
    ref = torchvision.models.vit_b_16()
    assert ours == {k for k in ref.state_dict() if not k.startswith("heads.")}


def test_byol_views_are_asymmetric():
    k1, k2 = view_recipes("byol")
    g = torch.Generator().manual_seed(0)
    p1, p2 = sample_params(4000, 32, 32, k1, 0.08, g), sample_params(4000, 32, 32, k2, 0.08, g)
    assert (p1.sigma > 0).float().mean() == 1.0  # blur always in the first view
    assert 0.08 < (p2.sigma > 0).float().mean() < 0.12  # p = 0.1 in the second
    assert p1.solarize is None and 0.18 < p2.solarize.float().mean() < 0.22
    assert view_recipes("byol-cifar") == ("byol-cifar-view1", "byol-cifar-view2")
    assert view_recipes("cifar") == ("cifar", "cifar")
    # solarize inverts the pixels at or above 128/255, and only in the images drawn for it
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    p = sample_params(2, 8, 8, k2, 1.0, torch.Generator().manual_seed(1))
    p.boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    p.jitter = (torch.zeros(2, dtype=torch.bool), *p.jitter[1:])
    p.gray, p.sigma, p.flip = torch.zeros(2, dtype=torch.bool), torch.zeros(2), torch.zeros(2, dtype=torch.bool)
    p.solarize = torch.tensor([True, False])
    out = apply_params(img, p, 8, k2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = img.float() / 255
    expected = torch.stack([torch.where(x[0] >= SOLARIZE_THRESHOLD, 1 - x[0], x[0]), x[1]])
    assert torch.allclose(out, (expected - mean) / std, atol=1e-5)


def test_v3_config_checks():
    with pytest.raises(ConfigError, match="go together"):
        resolve("cifar10-cpu", overrides=["method.dictionary=v3"])
    with pytest.raises(ConfigError, match="patch_size"):
        resolve("cifar10-v3-cpu", overrides=["model.arch=vit_tiny", "model.patch_size=5"])
    with pytest.raises(ConfigError, match="optim.optimizer"):
        resolve("cifar10-v3-cpu", overrides=["optim.optimizer=adam"])
    for preset in ("imagenet-v3-r50", "imagenet-v3-vit-s", "imagenet-v3-vit-b", "cifar10-v3-cpu"):
        assert resolve(preset).method.dictionary == "v3"


def test_v3_pretrain_resumes_exactly(tiny_data, tmp_path):
    from moco.tasks.pretrain import pretrain

    cfg = tiny_config(tmp_path, "method.dictionary=v3", "model.head=v3", "model.mlp_dim=32", "optim.optimizer=lars",
                      "method.m_schedule=cosine", "optim.epochs=2", "data.augmentation=byol-cifar")
    full = pretrain(cfg, tiny_data, tmp_path / "full", progress=False, knn=False)
    pretrain(cfg, tiny_data, tmp_path / "split", progress=False, knn=False, max_steps=3)
    pretrain(cfg, tiny_data, tmp_path / "split", resume="auto", progress=False, knn=False)
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint_last.pt", weights_only=True)["model"]
    assert math.isfinite(full.metrics["loss"]) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("predictor.") for k in a)
