"""The end-to-end and memory-bank dictionaries: loss values, gradients, bank update rule, K, wiring."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from moco.config import ConfigError, resolve
from moco.methods import EndToEnd, MemoryBank, MoCo, batch_nce, build_moco, update_bank
from moco.models.resnet import build_resnet


def tiny_encoder(dim: int = 8) -> nn.Module:
    return build_resnet("resnet18", width=4, cifar_stem=True, num_classes=dim, bn_splits=1)


def test_batch_nce_matches_hand_computation():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(3, 4), dim=1)
    loss, logits = batch_nce(q, k, T=0.5)
    assert logits.shape == (3, 3)  # 1 positive + K = N - 1 negatives
    expected = 0.0
    for i in range(3):
        sims = [float(q[i] @ k[j]) / 0.5 for j in range(3)]
        assert logits[i, 0].item() == pytest.approx(sims[i], abs=1e-6)
        assert sorted(logits[i, 1:].tolist()) == pytest.approx(sorted(s for j, s in enumerate(sims) if j != i))
        expected += -sims[i] + math.log(sum(math.exp(s) for s in sims))
    assert loss.item() == pytest.approx(expected / 3, abs=1e-5)
    # the same as cross-entropy with label i over the (N, N) similarity matrix
    assert torch.allclose(loss, F.cross_entropy(q @ k.t() / 0.5, torch.arange(3)), atol=1e-6)


def test_batch_nce_offset_picks_this_process_slice():
    torch.manual_seed(1)
    q, k = F.normalize(torch.randn(2, 4), dim=1), F.normalize(torch.randn(6, 4), dim=1)
    loss, logits = batch_nce(q, k, T=0.2, offset=2)
    assert logits.shape == (2, 6)
    assert torch.allclose(loss, F.cross_entropy(q @ k.t() / 0.2, torch.tensor([2, 3])), atol=1e-6)


def test_end_to_end_gradients_flow_through_queries_and_keys():
    torch.manual_seed(0)
    model = EndToEnd(tiny_encoder(), T=0.2)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    # loss through the key branch alone: gradient reaches the encoder from im_k too
    loss, logits = model(x1, x2, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (4, 4)
    loss.backward()
    g_both = model.encoder_q.conv1.weight.grad.clone()
    assert g_both.abs().sum() > 0
    model.zero_grad()
    x2r = x2.clone().requires_grad_(True)
    loss, _ = model(x1, x2r, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert x2r.grad is not None and x2r.grad.abs().sum() > 0  # keys are not detached
    assert not hasattr(model, "encoder_k") and not hasattr(model, "queue")


def test_end_to_end_shuffle_bn_equals_unshuffled_with_plain_bn():
    """With one BN group, shuffling the key batch cannot change the keys: the un-shuffle is exact."""
    torch.manual_seed(0)
    enc = tiny_encoder()
    a, b = EndToEnd(enc, T=0.2, shuffle_bn=True), EndToEnd(enc, T=0.2, shuffle_bn=False)
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    la, _ = a(x1, x2, generator=torch.Generator().manual_seed(3))
    lb, _ = b(x1, x2)
    assert torch.allclose(la, lb, atol=1e-5)


def test_end_to_end_shuffle_bn_normalises_each_key_with_the_group_it_was_shuffled_into():
    """With 2 BN groups (SplitBatchNorm), the key batch is shuffled before the groups are formed: each key is its
    image encoded, with batch statistics, among the 2 others of its shuffled group, then put back in place."""
    torch.manual_seed(0)
    split = build_resnet("resnet18", width=4, cifar_stem=True, num_classes=8, bn_splits=2)
    plain = build_resnet("resnet18", width=4, cifar_stem=True, num_classes=8, bn_splits=1)
    plain.load_state_dict(split.state_dict())
    x1, x2 = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    loss, logits = EndToEnd(split, T=0.2, shuffle_bn=True)(x1, x2, generator=torch.Generator().manual_seed(3))
    order = torch.randperm(6, generator=torch.Generator().manual_seed(3))  # the draw the shuffle made
    assert not torch.equal(order[:3].sort().values, torch.arange(3))  # the groups are not the batch's halves
    with torch.no_grad():
        k = torch.empty(6, 8)
        for group in (order[:3], order[3:]):
            k[group] = F.normalize(plain(x2[group]), dim=1)
        q = torch.cat([F.normalize(plain(x1[:3]), dim=1), F.normalize(plain(x1[3:]), dim=1)])  # unshuffled
    expected, _ = batch_nce(q, k, T=0.2)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-4)
    unshuffled, _ = EndToEnd(split, T=0.2, shuffle_bn=False)(x1, x2)
    assert abs(unshuffled.item() - loss.item()) > 1e-3  # with 2 groups the shuffle changes the keys


def test_update_bank_rule():
    bank = F.normalize(torch.randn(5, 3), dim=1)
    old = bank.clone()
    q = F.normalize(torch.randn(2, 3), dim=1)
    update_bank(bank, torch.tensor([4, 1]), q, bank_m=0.5)
    assert torch.allclose(bank[4], F.normalize(0.5 * old[4] + 0.5 * q[0], dim=0), atol=1e-6)
    assert torch.allclose(bank[1], F.normalize(0.5 * old[1] + 0.5 * q[1], dim=0), atol=1e-6)
    for i in (0, 2, 3):  # entries of images not in the batch are untouched
        assert torch.equal(bank[i], old[i])
    update_bank(bank, torch.tensor([0]), q[:1], bank_m=0.0)  # bank_m = 0: the entry becomes the query
    assert torch.allclose(bank[0], q[0], atol=1e-6)


def test_memory_bank_step():
    torch.manual_seed(0)
    model = MemoryBank(tiny_encoder(), dim=8, n_images=20, K=7, T=0.1)
    assert model.bank.shape == (20, 8)
    assert torch.allclose(model.bank.norm(dim=1), torch.ones(20), atol=1e-5)
    bank0 = model.bank.clone()
    x = torch.randn(4, 3, 16, 16)
    index = torch.tensor([3, 9, 0, 17])
    gen = torch.Generator().manual_seed(5)
    loss, logits = model(x, torch.randn(4, 3, 16, 16), generator=gen, index=index)
    assert logits.shape == (4, 1 + 7)
    # the loss: InfoNCE against the images' own entries (positive) and K entries drawn with the generator
    neg = torch.randint(20, (7,), generator=torch.Generator().manual_seed(5))
    q = F.normalize(model.encoder_q(x).float(), dim=1)
    pos = (q * bank0[index]).sum(1, keepdim=True)
    expected = F.cross_entropy(torch.cat([pos, q @ bank0[neg].t()], 1) / 0.1, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(loss, expected, atol=1e-5)
    # gradients reach the encoder, never the bank (a buffer)
    loss.backward()
    assert model.encoder_q.conv1.weight.grad.abs().sum() > 0
    assert not model.bank.requires_grad
    # only the batch's entries moved, following the bank rule
    changed = (model.bank != bank0).any(1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(index.tolist())
    assert torch.allclose(model.bank[index], F.normalize(0.5 * bank0[index] + 0.5 * q.detach(), dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="index"):
        model(x, x)


def test_build_moco_selects_the_dictionary_and_checks_config():
    cfg = resolve("cifar10-cpu", overrides=["method.dictionary=end_to_end"])
    assert isinstance(build_moco(cfg), EndToEnd)
    cfg = resolve("cifar10-cpu", overrides=["method.dictionary=memory_bank", "method.K=100"])
    bank = build_moco(cfg, n_images=300)
    assert isinstance(bank, MemoryBank) and bank.bank.shape == (300, 128) and bank.K == 100
    with pytest.raises(ValueError, match="number of training images"):
        build_moco(cfg)
    assert isinstance(build_moco(resolve("cifar10-cpu")), MoCo)
    with pytest.raises(ConfigError, match="method.dictionary"):
        resolve("cifar10-cpu", overrides=["method.dictionary=queue"])
    with pytest.raises(ConfigError, match="symmetric"):
        resolve("cifar10-cpu", overrides=["method.dictionary=end_to_end", "method.symmetric=true"])
    with pytest.raises(ConfigError, match="bank_m"):
        resolve("cifar10-cpu", overrides=["method.bank_m=1.0"])
    # K below the batch is fine for a memory bank (nothing is enqueued), not for MoCo
    resolve("cifar10-cpu", overrides=["method.dictionary=memory_bank", "method.K=16"])
    with pytest.raises(ConfigError, match="method.K"):
        resolve("cifar10-cpu", overrides=["method.K=16"])


@pytest.mark.parametrize("dictionary", ["end_to_end", "memory_bank"])
def test_pretrain_runs_and_resumes_with_each_dictionary(tiny_data, tmp_path, dictionary):
    """The training loop needs no branch per dictionary: each trains, checkpoints, and resumes exactly."""
    from moco.tasks.pretrain import pretrain

    cfg = tiny_config(tmp_path, "method.dictionary=" + dictionary, "optim.epochs=2")
    full = pretrain(cfg, tiny_data, tmp_path / "full", progress=False, knn=False)
    pretrain(cfg, tiny_data, tmp_path / "split", progress=False, knn=False, max_steps=1)
    resumed = pretrain(cfg, tiny_data, tmp_path / "split", resume="auto", progress=False, knn=False)
    assert math.isfinite(full.metrics["loss"]) and resumed.metrics["loss"] == pytest.approx(full.metrics["loss"], abs=0)
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint_last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if dictionary == "memory_bank":
        assert a["bank"].shape == (48, 128)  # one entry per training image
    else:
        assert not any(k.startswith("encoder_k") for k in a)


@pytest.mark.parametrize("dictionary", ["moco", "end_to_end", "memory_bank", "v3"])
def test_logits_and_loss_are_fp32_under_bf16_autocast_and_match_an_fp32_loss(tmp_path, dictionary):
    """InfoNCE's similarities and cross-entropy leave autocast: the logits are fp32, and equal those an fp32
    computation makes from the same (bf16-autocast) features."""
    from moco.methods import info_nce

    preset = "cifar10-v3-cpu" if dictionary == "v3" else "cifar10-cpu"
    extra = [] if dictionary == "v3" else [f"method.dictionary={dictionary}"]
    cfg = resolve(preset, overrides=["model.width=8", "model.bn_splits=2", "optim.batch_size=4", "method.K=16",
                                     *extra])
    torch.manual_seed(0)
    model = build_moco(cfg, n_images=8)
    x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = model(x1, x2, generator=torch.Generator().manual_seed(0), index=torch.arange(4))
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    # the hand-made bf16 matmul that autocast used to make differs from fp32 by ~1e-3 per similarity;
    # with autocast off inside the loss, the values are the fp32 ones
    q, k, queue = (F.normalize(torch.randn(4, 32), dim=1) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, inside = info_nce(q, k, queue, 0.1)
    _, reference = info_nce(q, k, queue, 0.1)
    bf16 = torch.cat([(q * k).sum(1, keepdim=True), (q.bfloat16() @ queue.bfloat16().t()).float()], 1) / 0.1
    assert torch.equal(inside, reference) and (bf16 - reference).abs().max() > 1e-4
