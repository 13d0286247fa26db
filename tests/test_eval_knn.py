"""Tests of the weighted k-NN evaluator (Wu et al., CVPR 2018, §3.4)."""

import pytest
import torch
import torch.nn.functional as F

from eval.knn import KNNEvaluator
from ssl_bench.core.errors import OptionError, SslBenchError
from ssl_bench.core.registry import EVALUATORS


def reference_votes(train, train_labels, test, num_classes, k, temperature):
    """Brute force: cosine similarities by matmul, top-k, exp(s/τ)-weighted scatter-add."""
    similarity = F.normalize(test.double(), dim=1) @ F.normalize(train.double(), dim=1).T
    top, idx = similarity.topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), num_classes, dtype=torch.float64)
    return votes.scatter_add_(1, train_labels[idx], (top / temperature).exp())


def accuracy(votes, labels, top):
    pred = votes.topk(min(top, votes.shape[1]), dim=1).indices
    return 100.0 * (pred == labels[:, None]).any(dim=1).double().mean().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_train,n_test,dim,num_classes,ks", [
    (300, 80, 16, 10, (20, 200)),
    (1000, 150, 64, 7, (1, 5, 50)),
    (60, 40, 8, 3, (20, 200)),  # k = 200 is clamped to N_train = 60
])
def test_matches_brute_force_reference(seed, n_train, n_test, dim, num_classes, ks):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train, dim, generator=g)
    test = torch.randn(n_test, dim, generator=g)
    train_labels = torch.randint(0, num_classes, (n_train,), generator=g)
    test_labels = torch.randint(0, num_classes, (n_test,), generator=g)
    knn = KNNEvaluator(ks=ks)

    votes = knn.class_votes(train, train_labels, test, num_classes)
    metrics = knn.evaluate(train, train_labels, test, test_labels, num_classes)

    assert sorted(metrics) == sorted(f"knn_top{t}_k{k}" for k in ks for t in (1, 5))
    for k in ks:
        ref = reference_votes(train, train_labels, test, num_classes, k, 0.07)
        assert votes[k].shape == (n_test, num_classes)
        assert torch.equal(votes[k].argmax(dim=1), ref.argmax(dim=1))
        assert metrics[f"knn_top1_k{k}"] == pytest.approx(accuracy(ref, test_labels, 1))
        assert metrics[f"knn_top5_k{k}"] == pytest.approx(accuracy(ref, test_labels, 5))


def clustered(num_classes, per_class, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 10
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=g), labels


def test_clustered_features_give_100_percent():
    train, train_labels = clustered(5, 100, seed=0)
    test, test_labels = clustered(5, 20, seed=0)
    metrics = KNNEvaluator().evaluate(train, train_labels, test + 0.05 * torch.randn_like(test),
                                      test_labels, 5)
    # k = 200 reaches far into other clusters; the exp(s/τ) weights still make the own cluster win.
    assert metrics == {"knn_top1_k20": 100.0, "knn_top5_k20": 100.0,
                       "knn_top1_k200": 100.0, "knn_top5_k200": 100.0}


def test_exponential_weighting_decides_the_vote():
    # One neighbour of class 0 at similarity 1, two of class 1 at similarity 0.8:
    # exp(1/0.07) > 2·exp(0.8/0.07), so class 0 wins; counting votes, class 1 would.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_labels = torch.tensor([0, 1, 1])
    test, test_labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])

    weighted = KNNEvaluator(ks=(3,)).evaluate(train, train_labels, test, test_labels, 2)
    near_uniform = KNNEvaluator(ks=(3,), temperature=100.0).evaluate(
        train, train_labels, test, test_labels, 2)

    assert weighted["knn_top1_k3"] == 100.0
    assert near_uniform["knn_top1_k3"] == 0.0


def test_small_temperature_does_not_overflow():
    train, train_labels = clustered(3, 30, seed=1)
    test, test_labels = clustered(3, 10, seed=2)
    metrics = KNNEvaluator(ks=(20,), temperature=1e-4).evaluate(
        train, train_labels, test, test_labels, 3)
    assert all(0.0 <= v <= 100.0 for v in metrics.values())


def test_top5_with_fewer_than_five_classes_is_top_c():
    train, train_labels = clustered(3, 30, seed=1)
    test = torch.randn(25, 32)
    metrics = KNNEvaluator().evaluate(train, train_labels, test, torch.randint(0, 3, (25,)), 3)
    assert metrics["knn_top5_k20"] == 100.0 and metrics["knn_top5_k200"] == 100.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("split", ["train", "test"])
def test_non_finite_features_raise(bad, split):
    train, test = torch.randn(20, 4), torch.randn(10, 4)
    (train if split == "train" else test)[3, 1] = bad
    with pytest.raises(SslBenchError, match=f"{split} feature.*diverged"):
        KNNEvaluator().evaluate(train, torch.zeros(20, dtype=torch.long), test,
                                torch.zeros(10, dtype=torch.long), 2)


def test_mismatched_inputs_raise_value_error():
    with pytest.raises(ValueError, match="width"):
        KNNEvaluator().evaluate(torch.randn(20, 4), torch.zeros(20, dtype=torch.long),
                                torch.randn(10, 5), torch.zeros(10, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        KNNEvaluator().evaluate(torch.randn(20, 4), torch.full((20,), 2), torch.randn(10, 4),
                                torch.zeros(10, dtype=torch.long), 2)


@pytest.mark.parametrize("options", [{"ks": ()}, {"ks": (20, 0)}, {"ks": "twenty"},
                                     {"temperature": 0.0}, {"temperature": -0.07},
                                     {"temperature": "warm"}])
def test_bad_options_raise(options):
    with pytest.raises(OptionError):
        KNNEvaluator(**options)


def test_registered_and_constructible_without_arguments():
    knn = EVALUATORS.get("knn")()
    assert knn.name == "knn" and knn.ks == (20, 200) and knn.temperature == 0.07
    assert EVALUATORS.get("knn")(ks=50).ks == (50,)
