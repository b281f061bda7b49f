"""The method's mechanics: momentum update, queue, InfoNCE, shuffle BN, gradients, split BN."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moco.methods.moco import MoCo, batch_shuffle, batch_unshuffle, info_nce, update_momentum
from moco.models.resnet import SplitBatchNorm, build_resnet


def tiny_encoder(dim: int = 8, bn_splits: int = 1) -> nn.Module:
    enc = build_resnet("resnet18", width=4, cifar_stem=True, num_classes=dim, bn_splits=bn_splits)
    return enc


def make_moco(K: int = 16, dim: int = 8, **kw) -> MoCo:
    torch.manual_seed(0)
    return MoCo(tiny_encoder(dim, kw.pop("bn_splits", 1)), dim=dim, K=K, **kw)


def test_momentum_update_formula():
    q, k = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        q.weight.fill_(1.0), q.bias.fill_(2.0), k.weight.fill_(-1.0), k.bias.fill_(0.0)
    update_momentum(k, q, m=0.9)
    assert torch.allclose(k.weight, torch.full_like(k.weight, 0.9 * -1 + 0.1 * 1))
    assert torch.allclose(k.bias, torch.full_like(k.bias, 0.1 * 2))
    update_momentum(k, q, m=0.0)  # m = 0: the key encoder becomes the query encoder
    assert torch.equal(k.weight, q.weight)


def test_key_encoder_starts_as_copy_and_follows_momentum_only():
    model = make_moco(m=0.5)
    for pq, pk in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(pq, pk)
        assert not pk.requires_grad
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, _ = model(x1, x2)
    loss.backward()
    for p in model.encoder_k.parameters():
        assert p.grad is None  # no gradient ever reaches the key encoder
    q_before = [p.detach().clone() for p in model.encoder_q.parameters()]
    k_before = [p.detach().clone() for p in model.encoder_k.parameters()]
    opt.step()
    model(x1, x2)  # the next forward applies theta_k <- m theta_k + (1 - m) theta_q
    for pk, kb, pq in zip(model.encoder_k.parameters(), k_before, model.encoder_q.parameters()):
        assert torch.allclose(pk, 0.5 * kb + 0.5 * pq, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(q_before, model.encoder_q.parameters()))


def test_queue_is_normalised_and_wraps_around():
    model = make_moco(K=10)
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(10), atol=1e-5)
    keys = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(3)]
    for k in keys:
        model._dequeue_and_enqueue(k)
    # 12 keys into a queue of 10: positions 0-3, 4-7, then 8, 9, 0, 1.
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue[0:2], keys[2][2:4])
    assert torch.equal(model.queue[2:4], keys[0][2:4])
    assert torch.equal(model.queue[4:8], keys[1])
    assert torch.equal(model.queue[8:10], keys[2][0:2])


def test_enqueuing_more_than_k_keys_keeps_the_newest():
    model = make_moco(K=4)
    k = F.normalize(torch.randn(6, 8), dim=1)
    model._dequeue_and_enqueue(k)
    assert set(map(tuple, model.queue.tolist())) == set(map(tuple, k[2:].tolist()))


def test_info_nce_matches_hand_computation():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    queue = F.normalize(torch.tensor([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]), dim=1)
    T = 0.5
    loss, logits = info_nce(q, k, queue, T)
    expected = 0.0
    for i in range(2):
        pos = math.exp(float(q[i] @ k[i]) / T)
        neg = sum(math.exp(float(q[i] @ n) / T) for n in queue)
        expected += -math.log(pos / (pos + neg))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)
    assert logits.shape == (2, 4)
    assert logits[0, 0].item() == pytest.approx(0.8 / T, rel=1e-6)


def test_shuffle_unshuffle_is_inverse():
    x = torch.arange(40.0).view(10, 4)
    g = torch.Generator().manual_seed(3)
    xs, idx = batch_shuffle(x, g)
    assert not torch.equal(xs, x)
    assert torch.equal(batch_unshuffle(xs, idx), x)


def test_forward_enqueues_keys_and_logits_use_old_queue():
    model = make_moco(K=16)
    old = model.queue.clone()
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    _, logits = model(x1, x2)
    assert logits.shape == (4, 17)
    assert int(model.queue_ptr) == 4
    assert torch.equal(model.queue[4:], old[4:])
    with torch.no_grad():  # the negatives were the queue *before* this step's keys (same batch stats)
        q = F.normalize(model.encoder_q(x1), dim=1)
    assert torch.allclose(logits[:, 1:] * model.T, q @ old.t(), atol=1e-4)


def test_symmetric_loss_enqueues_both_views():
    model = make_moco(K=16, symmetric=True, shuffle_bn=False)
    ref = copy.deepcopy(model)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    loss, _ = model(x1, x2)
    assert int(model.queue_ptr) == 8
    with torch.no_grad():
        q1, q2 = (F.normalize(ref.encoder_q(x), dim=1) for x in (x1, x2))
        k1, k2 = (F.normalize(ref.encoder_k(x), dim=1) for x in (x1, x2))
    expected = info_nce(q1, k2, ref.queue, ref.T)[0] + info_nce(q2, k1, ref.queue, ref.T)[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(model.queue[:8], torch.cat([k1, k2]), atol=1e-5)


def test_shuffle_bn_changes_keys_only_through_bn_groups():
    """With plain BN the shuffle is invisible; with split BN it changes which samples share statistics."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    plain = make_moco(bn_splits=1)
    g = torch.Generator().manual_seed(0)
    k_shuf = plain._keys(x, g)
    plain.shuffle_bn = False
    k_plain = plain._keys(x, None)
    assert torch.allclose(k_shuf, k_plain, atol=1e-5)
    split = make_moco(bn_splits=4)
    k_shuf = split._keys(x, torch.Generator().manual_seed(0))
    split.shuffle_bn = False
    k_noshuf = split._keys(x, None)
    assert not torch.allclose(k_shuf, k_noshuf, atol=1e-4)


def test_split_batchnorm_normalises_each_group():
    bn = SplitBatchNorm(3, num_splits=2, affine=False)
    x = torch.cat([torch.randn(4, 3, 5, 5) * 3 + 10, torch.randn(4, 3, 5, 5) - 7])
    y = bn(x)
    for part in y.chunk(2):
        assert torch.allclose(part.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(part.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    # running stats: the mean of what each group would have contributed
    ref = [nn.BatchNorm2d(3, affine=False) for _ in range(2)]
    for r, part in zip(ref, x.chunk(2)):
        r(part)
    assert torch.allclose(bn.running_mean, (ref[0].running_mean + ref[1].running_mean) / 2, atol=1e-6)
    assert torch.allclose(bn.running_var, (ref[0].running_var + ref[1].running_var) / 2, atol=1e-5)
    bn.eval()
    assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, eps=bn.eps))


def test_split_batchnorm_with_one_split_is_plain_bn():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    a, b = SplitBatchNorm(3, num_splits=1), nn.BatchNorm2d(3)
    assert torch.allclose(a(x), b(x))


def test_from_backbone_splits_batchnorm_for_shuffle_bn_on_one_device():
    import torchvision

    from moco import MoCo, remove_classifier
    from moco.models.resnet import SplitBatchNorm

    def split_layers(model):
        return [m for m in model.modules() if isinstance(m, SplitBatchNorm)]

    net = MoCo.from_backbone(remove_classifier(torchvision.models.resnet18()), K=64, image_size=32, bn_splits=4)
    assert split_layers(net.encoder_q) and len(split_layers(net.encoder_k)) == len(split_layers(net.encoder_q))
    assert all(m.num_splits == 4 for m in split_layers(net.encoder_q))
    plain = MoCo.from_backbone(remove_classifier(torchvision.models.resnet18()), K=64, image_size=32)
    assert not split_layers(plain.encoder_q)
