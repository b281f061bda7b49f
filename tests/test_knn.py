"""Weighted kNN against hand-computed votes."""

import math

import torch
import torch.nn.functional as F

from moco.evaluation.knn import knn_accuracy, knn_predict


def test_votes_are_exp_similarity_over_t():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    test = F.normalize(torch.tensor([[0.9, 0.1]]), dim=1)
    scores = knn_predict(test, train, labels, num_classes=2, k=2, t=0.5)
    sims = (test @ train.t())[0]
    top2 = sims.topk(2).indices.tolist()
    expected = [0.0, 0.0]
    for i in top2:
        expected[labels[i]] += math.exp(sims[i].item() / 0.5)
    assert torch.allclose(scores[0], torch.tensor(expected), rtol=1e-5)


def test_accuracy_on_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    tr_y = torch.arange(3).repeat_interleave(50)
    te_y = torch.arange(3).repeat_interleave(10)
    tr = F.normalize(centers[tr_y] + 0.05 * torch.randn(150, 16, generator=g), dim=1)
    te = F.normalize(centers[te_y] + 0.05 * torch.randn(30, 16, generator=g), dim=1)
    res = knn_accuracy(tr, tr_y, te, te_y, 3, k=20, t=0.1)
    assert res["top1"] == 100.0
    shuffled = knn_accuracy(tr, tr_y[torch.randperm(150, generator=g)], te, te_y, 3, k=20, t=0.1)
    assert shuffled["top1"] < 70.0


def test_top5_counts_the_true_class_among_the_five_best_voted():
    """8 classes; each test point lies nearer another class's cluster than its own: top-1 misses it, the true
    class still has the second-largest vote, so top-5 finds it. With 5 or fewer classes top-5 would be 100%
    whatever the votes, so it is only checked above 5."""
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(8, 32, generator=g), dim=1)
    tr_y = torch.arange(8).repeat_interleave(20)
    tr = F.normalize(centers[tr_y] + 0.05 * torch.randn(160, 32, generator=g), dim=1)
    te_y = torch.arange(8)
    te = F.normalize(0.6 * centers[(te_y + 1) % 8] + 0.4 * centers[te_y], dim=1)
    res = knn_accuracy(tr, tr_y, te, te_y, 8, k=40, t=0.1)
    assert res["top1"] == 0.0 and res["top5"] == 100.0
    far = F.normalize(centers[(te_y + 4) % 8] + 0.01 * torch.randn(8, 32, generator=g), dim=1)
    assert knn_accuracy(tr, tr_y, far, te_y, 8, k=20, t=0.1)["top5"] < 100.0  # its own class out of the top 5


def test_knn_accuracy_normalises_raw_features_itself():
    """load_backbone's features are not unit vectors: a long feature of the wrong class must not outvote the
    nearer ones (unnormalised, its dot product 2.4 against 1.0 weighs e^24 against e^10 at t=0.1)."""
    g = torch.Generator().manual_seed(3)
    e1, e2 = torch.eye(8)[0], torch.eye(8)[1]
    near = e1 + 0.05 * torch.randn(10, 8, generator=g)
    tr = torch.cat([near, 3.0 * (0.8 * e1 + 0.6 * e2).view(1, 8), e2 + 0.05 * torch.randn(10, 8, generator=g)])
    tr_y = torch.tensor([0] * 10 + [1] * 11)
    te, te_y = 7.0 * (e1 + 0.05 * torch.randn(5, 8, generator=g)), torch.zeros(5, dtype=torch.long)
    raw = knn_accuracy(tr, tr_y, te, te_y, 2, k=5, t=0.1)
    assert raw["top1"] == 100.0
    assert raw == knn_accuracy(F.normalize(tr, dim=1), tr_y, F.normalize(te, dim=1), te_y, 2, k=5, t=0.1)
