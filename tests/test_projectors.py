"""Fast TRAK projectors and the factored per-example gradient path (d3mflow.projectors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from trak.gradient_computers import FunctionalGradientComputer
from trak.modelout_functions import ImageClassificationModelOutput
from trak.utils import vectorize

from d3mflow.attribution import featurize
from d3mflow.scores import full_scores
from d3mflow.models import build_model
from d3mflow import projectors
from d3mflow.projectors import (
    DenseProjector,
    FactoredGradientComputer,
    SparseProjector,
    resolve_projector,
    traker_components,
)

PROJECTORS = [DenseProjector, SparseProjector]
K = 2048


@pytest.mark.parametrize("cls", PROJECTORS)
def test_inner_products_preserved_within_jl_bounds(cls):
    """<Px, Py> / k estimates <x, y> with standard deviation <= sqrt(2/k) |x| |y|."""
    d = 3000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, d, generator=g)
    x[20:] += 0.8 * x[:20]  # some correlated pairs
    projected = cls(d, K, seed=0).project(x, model_id=0)
    exact = x @ x.T
    estimate = projected @ projected.T / K
    norms = x.norm(dim=1)
    error = (estimate - exact).abs() / (norms[:, None] * norms[None, :])
    assert error.max() < 5 * math.sqrt(2 / K)
    assert error.mean() < 1.5 * math.sqrt(2 / K)
    assert torch.allclose(projected.norm(dim=1) / math.sqrt(K), norms, rtol=0.1)


@pytest.mark.parametrize("cls", PROJECTORS)
def test_same_seed_same_projection_other_seed_or_model_differs(cls):
    x = torch.randn(4, 500)
    first = cls(500, 256, seed=3).project(x, model_id=0)
    assert torch.equal(first, cls(500, 256, seed=3).project(x, model_id=0))
    assert not torch.allclose(first, cls(500, 256, seed=4).project(x, model_id=0))
    projector = cls(500, 256, seed=3)
    assert not torch.allclose(first, projector.project(x, model_id=1))
    assert torch.equal(first, projector.project(x, model_id=0))


@pytest.mark.parametrize("cls", PROJECTORS)
def test_dict_of_parameter_gradients_projects_like_the_flat_vector(cls):
    grads = {"a": torch.randn(3, 4, 5), "b": torch.randn(3, 7), "c": torch.randn(3, 2, 2, 2)}
    projector = cls(20 + 7 + 8, 128, seed=0)
    flat = vectorize(grads, device="cpu")
    assert torch.allclose(projector.project(grads, 0), projector.project(flat, 0), atol=1e-5)


def test_sparse_projector_checks_gradient_size():
    with pytest.raises(ValueError, match="coordinates"):
        SparseProjector(10, 128, seed=0).project(torch.randn(2, 11), 0)


def test_dense_projector_refuses_huge_matrices(monkeypatch):
    monkeypatch.setattr(DenseProjector, "MAX_BYTES", 1000)
    with pytest.raises(MemoryError, match="sparse"):
        DenseProjector(100, 128, seed=0)


def _model_with_stats(seed: int = 0) -> nn.Module:
    """resnet9 (width 2) with non-trivial batch-norm statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = build_model("resnet9", width=2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, 0.2)
            module.bias.data.normal_(0, 0.2)
    return model.eval()


class _BiasNet(nn.Module):
    """Strided, dilated convolutions with biases and a linear layer with a bias."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(3, 4, kernel_size=(3, 2), dilation=2, padding=(2, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("conv_path", ["grouped", "unfold"])
@pytest.mark.parametrize(
    "make_model, shape, classes",
    [(_model_with_stats, (1, 16, 16), 2), (lambda: _BiasNet().eval(), (2, 9, 11), 3)],
)
def test_factored_gradients_equal_vmap_gradients(make_model, shape, classes, conv_path, monkeypatch):
    """The factored path computes the same per-example gradients as traker's vmap, by either way
    of forming conv weight gradients, so its projection equals the sparse projection of the full
    per-example gradient vectors."""
    if conv_path == "unfold":
        monkeypatch.setattr(projectors, "UNFOLD_MIN_CHANNEL_PRODUCT", 0)
        monkeypatch.setattr(projectors, "UNFOLD_MAX_OUTPUT_POSITIONS", 10**9)
    else:
        monkeypatch.setattr(projectors, "UNFOLD_MIN_CHANNEL_PRODUCT", 10**9)
    model = make_model()
    x, y = torch.randn(6, *shape), torch.randint(0, classes, (6,))
    task, n = ImageClassificationModelOutput(), sum(p.numel() for p in model.parameters())
    reference = FunctionalGradientComputer(model, task, n, torch.float32, "cpu").compute_per_sample_grad((x, y))
    factored = FactoredGradientComputer(model, task, n, torch.float32, "cpu").compute_per_sample_grad((x, y))
    assert list(factored) == list(reference)
    for name in reference:
        assert torch.allclose(factored[name], reference[name], rtol=1e-4, atol=1e-6), name
    projector = SparseProjector(n, 256, seed=0)
    assert torch.allclose(projector.project(factored, 0), projector.project(vectorize(reference, device="cpu"), 0), rtol=1e-4, atol=1e-5)


def test_factored_out_to_loss_equals_traker_with_and_without_the_cached_forward():
    model = _model_with_stats()
    x, y = torch.randn(5, 1, 16, 16), torch.randint(0, 2, (5,))
    task, n = ImageClassificationModelOutput(), sum(p.numel() for p in model.parameters())
    reference = task.get_out_to_loss_grad(model, dict(model.named_parameters()), dict(model.named_buffers()), (x, y))
    computer = FactoredGradientComputer(model, task, n, torch.float32, "cpu")
    computer.compute_per_sample_grad((x, y))
    assert torch.allclose(computer.compute_loss_grad((x, y)), reference, atol=1e-6)  # from the cached logits
    other_x = torch.randn(5, 1, 16, 16)
    computer.compute_per_sample_grad((other_x, y))
    assert torch.allclose(computer.compute_loss_grad((x, y)), reference, atol=1e-6)  # another batch: recomputed
    assert torch.allclose(computer.compute_loss_grad((x, y)), reference, atol=1e-6)  # nothing cached: recomputed


def test_factored_path_refuses_unsupported_layers():
    model = nn.Sequential(nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="LayerNorm"):
        FactoredGradientComputer(model, ImageClassificationModelOutput(), 18, torch.float32, "cpu")


def test_resolve_projector():
    assert resolve_projector("auto", "cpu") == "factored"
    assert resolve_projector("dense", "cpu") == "dense"
    assert traker_components("stock", nn.Linear(2, 2), proj_dim=128, seed=0, device="cpu") == {}
    with pytest.raises(ValueError, match="unknown projector"):
        resolve_projector("fast", "cpu")


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """Full TRAK score matrices of one small model under every projector (and stock reseeded)."""
    model = _model_with_stats()
    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.randn(384, 1, 16, 16, generator=g), torch.randint(0, 2, (384,), generator=g)
    x_val, y_val = torch.randn(24, 1, 16, 16, generator=g), torch.randint(0, 2, (24,), generator=g)
    workdir = tmp_path_factory.mktemp("trak")

    def run(projector, seed):
        arrays = featurize(
            model,
            [(x_train[i : i + 128], y_train[i : i + 128]) for i in range(0, 384, 128)],
            [(x_val, y_val)],
            n_train=384, n_targets=24, proj_dim=128, projector_seed=seed, workdir=workdir, projector=projector,
        )
        return full_scores([arrays["features"]], [arrays["out_to_loss"]], [arrays["target_grads"]], np.arange(24))

    return {(p, s): run(p, s) for p, s in [("stock", 0), ("stock", 1), ("dense", 0), ("sparse", 0), ("factored", 0)]}


def test_factored_scores_equal_sparse_scores(scores):
    """Same gradients, same projection: equal scores up to float32 rounding, which traker's
    (X^T X)^-1 amplifies (measured: max deviation 0.14% of the largest score)."""
    factored, sparse = scores[("factored", 0)], scores[("sparse", 0)]
    assert np.abs(factored - sparse).max() < 1e-2 * np.abs(sparse).max()
    assert min(spearmanr(factored[:, j], sparse[:, j]).statistic for j in range(sparse.shape[1])) > 0.999
    assert np.abs(factored - scores[("stock", 0)]).max() > 1e-1 * np.abs(sparse).max()  # a different projection does move them


@pytest.mark.parametrize("projector", ["dense", "sparse"])
def test_scores_agree_with_stock_like_stock_reseeded(scores, projector):
    """Another random projection moves scores as much as reseeding stock does, not more (loosely)."""
    stock = scores[("stock", 0)]

    def agreement(other):
        return np.mean([spearmanr(stock[:, j], other[:, j]).statistic for j in range(stock.shape[1])])

    floor = agreement(scores[("stock", 1)])
    assert floor > 0.3
    assert agreement(scores[(projector, 0)]) > floor - 0.15
