"""Fast TRAK featurization: random projections and per-example gradients for ``traker``.

traker's CPU path is slow for two reasons. Its ``BasicProjector`` regenerates a
``n_params x 100`` Gaussian block for every 100 output columns on EVERY batch, so random number
generation and a dense ``n_params x proj_dim`` product dominate; and its
``FunctionalGradientComputer`` gets per-example gradients with ``torch.func.vmap``, which costs
several batched backward passes. This module replaces either part through traker's own
interfaces (``TRAKer(projector=..., gradient_computer=...)``); traker still stores the
projected gradients, computes ``X (X^T X)^-1`` in ``finalize_features`` and scores targets.

``trak.projector`` choices (``traker_components``):

``stock``
    traker's default: ``CudaProjector`` when CUDA and ``fast_jl`` work, else ``BasicProjector``
    (Gaussian on CPU), with vmap gradients.
``dense``
    ``DenseProjector``: a Rademacher matrix drawn ONCE per (seed, model_id) and applied with one
    matmul per batch. Same distribution family as stock, no regeneration; holds
    ``n_params x proj_dim`` floats (refused above ``DenseProjector.MAX_BYTES``).
``sparse``
    ``SparseProjector``: a CountSketch sparse JL transform on traker's vmap gradients. Each
    gradient coordinate is added, with a random sign, to one random output coordinate, so a
    projection costs O(n_params) per example instead of O(n_params x proj_dim).
``factored``
    ``SparseProjector`` on gradients from ``FactoredGradientComputer``: one batched forward and
    backward pass per batch, with each layer's per-example weight gradient formed from its
    factors (input patches x output gradients) instead of vmap, and traker's out-to-loss term
    taken from the same forward pass.
``auto``
    ``stock`` when CUDA is available and ``fast_jl`` imports (traker's fast CUDA kernel),
    otherwise ``factored`` (on CPU or GPU).

``dense`` and ``sparse`` project in float32 even when traker runs in float16 (its CUDA
default): a projected coordinate sums many gradient coordinates times ``+-1`` or ``+-sqrt(k)``
and could overflow float16 before traker divides by ``sqrt(n_params)`` and casts to its dtype.

Approximations, stated precisely:

* ``sparse``/``factored`` use a different random matrix from stock: ``S`` (n_params x k) has
  exactly one non-zero per row, ``+-sqrt(k)`` in a uniformly random column. ``E[S S^T] = k I``
  as for traker's unit-variance Gaussian/Rademacher matrices, so ``<S^T x, S^T y> / k`` is an
  unbiased estimate of ``<x, y>`` on traker's scale, with variance
  ``(|x|^2 |y|^2 + <x,y>^2 - 2 sum_i x_i^2 y_i^2) / k``, never above a Gaussian matrix's
  ``(|x|^2 |y|^2 + <x,y>^2) / k``. CountSketch has weaker high-probability
  (tail) guarantees than a dense JL matrix for vectors dominated by a few coordinates; the
  benchmark (bench/attribution.py) measures the resulting rank agreement against stock.
* ``factored`` computes the SAME per-example gradients as vmap (equal up to float rounding,
  tested) for models whose parameters all live in ``Conv2d`` (groups=1, zero padding),
  ``Linear`` and eval-mode ``BatchNorm2d`` layers, with traker's ``image_classification``
  margin; anything else is refused. It turns off in-place activations of the model it is given
  (numerically identical), because an in-place op would overwrite a captured layer output. It
  removes vmap's compute, not its memory: like vmap it hands traker's projector every
  per-example gradient of the batch (batch x n_params floats). A projection that never forms
  them (e.g. Kronecker-factored per layer, as in LoGra) would be a different random projection
  and is not implemented.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from trak.gradient_computers import AbstractGradientComputer
from trak.modelout_functions import AbstractModelOutput, ImageClassificationModelOutput
from trak.projectors import AbstractProjector, ProjectionType
from trak.utils import vectorize

PROJECTORS = ("stock", "dense", "sparse", "factored", "auto")

# Same convention as traker's BasicProjector: model ``model_id`` draws from seed + 1e5 * model_id.
_MODEL_ID_SEED_STRIDE = 100_000


def fast_jl_available() -> bool:
    """Whether traker's CUDA projection kernel (the separately built ``fast_jl``) can be used."""
    if not torch.cuda.is_available():
        return False
    try:
        import fast_jl  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_projector(name: str, device: str | torch.device) -> str:
    """The concrete projector ``name`` stands for on ``device`` (only ``auto`` changes)."""
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector {name!r}; expected one of {list(PROJECTORS)}")
    if name != "auto":
        return name
    return "stock" if torch.device(device).type == "cuda" and fast_jl_available() else "factored"


def traker_components(
    name: str,
    model: nn.Module,
    *,
    proj_dim: int,
    seed: int,
    device: str | torch.device,
) -> dict:
    """Keyword arguments for ``TRAKer`` selecting projector ``name`` (see the module docstring):
    ``projector`` (an instance) and, for ``factored``, ``gradient_computer`` (a class)."""
    name = resolve_projector(name, device)
    if name == "stock":
        return {}
    grad_dim = sum(p.numel() for p in model.parameters())
    cls = DenseProjector if name == "dense" else SparseProjector
    components = {"projector": cls(grad_dim, proj_dim, seed, device=device)}
    if name == "factored":
        components["gradient_computer"] = FactoredGradientComputer
    return components


def _generator(seed: int, model_id: int) -> torch.Generator:
    """A CPU generator, so that a seed gives the same projection on every device."""
    return torch.Generator().manual_seed(seed + _MODEL_ID_SEED_STRIDE * model_id)


class _DrawnOnceProjector(AbstractProjector):
    """A projection drawn once per (seed, model_id) by ``_draw`` and kept until the model id
    changes: traker's BasicProjector redraws its matrix on every batch."""

    proj_type: str | ProjectionType

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int,
        *,
        device: str | torch.device = "cpu",
        model_id: int = 0,
    ) -> None:
        super().__init__(grad_dim, proj_dim, seed, self.proj_type, device)
        self._draw(model_id)

    def _draw(self, model_id: int) -> None:
        raise NotImplementedError

    def _for_model(self, model_id: int) -> None:
        if model_id != self.model_id:
            self._draw(model_id)

    def free_memory(self) -> None:
        """Keep the projection: traker projects the targets with it after finalizing features."""


class DenseProjector(_DrawnOnceProjector):
    """Rademacher (+-1) JL matrix drawn once per (seed, model_id) and applied with one matmul.

    traker's ``BasicProjector`` redraws the same matrix in 100-column blocks on every batch;
    drawing it once removes that cost and leaves a single ``(B x n_params) @ (n_params x k)``
    product per batch. A model id change redraws the matrix."""

    MAX_BYTES = 4 * 2**30
    proj_type = ProjectionType.rademacher

    def _draw(self, model_id: int) -> None:
        size = self.grad_dim * self.proj_dim * 4
        if size > self.MAX_BYTES:
            raise MemoryError(
                f"a dense {self.grad_dim} x {self.proj_dim} projection needs {size / 2**30:.1f} GiB (limit "
                f"{self.MAX_BYTES / 2**30:.0f} GiB); use trak.projector 'sparse' or 'factored'"
            )
        self.model_id = model_id
        bits = torch.randint(0, 2, (self.grad_dim, self.proj_dim), generator=_generator(self.seed, model_id), dtype=torch.int8)
        self.matrix = (bits * 2 - 1).to(device=self.device, dtype=torch.float32)

    def project(self, grads: Tensor | dict[str, Tensor], model_id: int) -> Tensor:
        self._for_model(model_id)
        if isinstance(grads, dict):
            grads = vectorize(grads, device=self.device)
        return grads.float() @ self.matrix


class SparseProjector(_DrawnOnceProjector):
    """CountSketch sparse JL transform: coordinate i goes to column ``h(i)`` times ``s(i) sqrt(k)``.

    ``h`` (uniform over the k columns) and ``s`` (+-1) are drawn once per (seed, model_id) from a
    CPU generator. Applying it is one ``index_add_`` per parameter tensor, O(n_params) work per
    example. A dict of per-parameter gradients (traker's format, in parameter order) is projected
    tensor by tensor, never concatenated; ``project(dict)`` equals ``project(vectorize(dict))``."""

    proj_type = "countsketch"

    def _draw(self, model_id: int) -> None:
        self.model_id = model_id
        generator = _generator(self.seed, model_id)
        column = torch.randint(0, self.proj_dim, (self.grad_dim,), generator=generator)
        sign = torch.randint(0, 2, (self.grad_dim,), generator=generator) * 2 - 1
        self.column = column.to(self.device)
        self.sign = (sign * math.sqrt(self.proj_dim)).to(device=self.device, dtype=torch.float32)

    def project(self, grads: Tensor | dict[str, Tensor], model_id: int) -> Tensor:
        self._for_model(model_id)
        parts = grads.values() if isinstance(grads, dict) else [grads]
        parts = [g.reshape(len(g), -1) for g in parts]
        if sum(p.shape[1] for p in parts) != self.grad_dim:
            raise ValueError(f"gradients have {sum(p.shape[1] for p in parts)} coordinates, projector expects {self.grad_dim}")
        out = torch.zeros(len(parts[0]), self.proj_dim, dtype=torch.float32, device=self.device)
        start = 0
        for part in parts:
            stop = start + part.shape[1]
            out.index_add_(1, self.column[start:stop], part.to(device=self.device, dtype=torch.float32) * self.sign[start:stop])
            start = stop
        return out


class FactoredGradientComputer(AbstractGradientComputer):
    """Per-example gradients of traker's image-classification margin from ONE batched forward and
    backward pass.

    In eval mode no layer mixes examples, so the gradient of the batch's summed margin with
    respect to a layer's output holds every example's own output gradient ``delta``. A layer's
    per-example weight gradient is then a product of factors: ``sum_p delta_p x patch_p`` over the
    output positions ``p`` for a convolution, ``delta x input^T`` for a
    linear layer, ``sum_p delta * x_hat`` for a batch norm's scale and ``sum_p delta`` for biases.
    Returns traker's format: a dict name -> (B, *param.shape) in ``named_parameters`` order."""

    def __init__(
        self,
        model: nn.Module,
        task: AbstractModelOutput,
        grad_dim: int,
        dtype: torch.dtype,
        device: str | torch.device,
        grad_wrt: Iterable[str] | None = None,
    ) -> None:
        super().__init__(model, task, grad_dim, dtype, device)
        if grad_wrt is not None:
            raise ValueError("FactoredGradientComputer computes gradients for all parameters; grad_wrt is not supported")
        if not isinstance(task, ImageClassificationModelOutput):
            raise ValueError(f"FactoredGradientComputer supports traker's image_classification task only, got {type(task).__name__}")
        self.load_model_params(model)

    def load_model_params(self, model: nn.Module) -> None:
        self.model = model
        self.layers = _factored_layers(model)
        for module in model.modules():
            if getattr(module, "inplace", False):
                module.inplace = False
        self.func_weights = dict(model.named_parameters())
        self.func_buffers = dict(model.named_buffers())
        self._batch_logits: tuple[Tensor, Tensor, Tensor] | None = None

    def compute_per_sample_grad(self, batch: Iterable[Tensor]) -> dict[str, Tensor]:
        images, labels = batch
        inputs: dict[nn.Module, Tensor] = {}
        outputs: dict[nn.Module, Tensor] = {}

        def capture(module, args, output):
            inputs[module] = args[0].detach()
            outputs[module] = output

        handles = [module.register_forward_hook(capture) for module in self.layers]
        try:
            with torch.enable_grad():
                logits = self.model(images)
                margin = _margins(logits, labels)
                modules = list(outputs)
                deltas = torch.autograd.grad(margin.sum(), [outputs[m] for m in modules])
        finally:
            for handle in handles:
                handle.remove()
        # traker asks for the same batch's out-to-loss term next (TRAKer.featurize): keep the
        # logits so that compute_loss_grad needs no second forward pass.
        self._batch_logits = (images, labels, logits.detach())
        grads: dict[Tensor, Tensor] = {}
        for module, delta in zip(modules, deltas):
            grads.update(_layer_grads(module, inputs[module], delta.detach()))
        return {name: grads[param] for name, param in self.model.named_parameters()}

    def compute_loss_grad(self, batch: Iterable[Tensor]) -> Tensor:
        """traker's out-to-loss term ``1 - p(correct class)``, from the logits of the preceding
        ``compute_per_sample_grad`` call when it was given this very batch."""
        images, labels = batch
        cached, self._batch_logits = self._batch_logits, None
        if cached is None or cached[0] is not images or cached[1] is not labels:
            return self.modelout_fn.get_out_to_loss_grad(self.model, self.func_weights, self.func_buffers, batch)
        probs = self.modelout_fn.softmax(cached[2] / self.modelout_fn.loss_temperature)
        return (1 - probs[torch.arange(len(labels)), labels]).unsqueeze(-1)


def _margins(logits: Tensor, labels: Tensor) -> Tensor:
    """traker's image-classification margin per example: logit_y - logsumexp_{j != y} logit_j."""
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -torch.inf)
    return correct - others.logsumexp(dim=1)


def _factored_layers(model: nn.Module) -> list[nn.Module]:
    """The modules holding the model's parameters, checked to be ones whose per-example
    gradients ``_layer_grads`` can form from factors."""
    layers, unsupported = [], []
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            layers.append(module)
        elif isinstance(module, nn.Linear):
            layers.append(module)
        elif isinstance(module, nn.BatchNorm2d) and module.affine and module.running_mean is not None:
            layers.append(module)
        else:
            unsupported.append(f"{name} ({type(module).__name__})")
    if unsupported:
        raise ValueError(
            "the factored gradient path supports Conv2d (groups=1, zero padding), Linear and "
            f"BatchNorm2d layers only; unsupported: {unsupported}. Use trak.projector 'sparse'"
        )
    return layers


def _layer_grads(module: nn.Module, x: Tensor, delta: Tensor) -> dict[Tensor, Tensor]:
    """Per-example gradients {parameter: (B, *parameter.shape)} of one layer from its input ``x``
    and the gradient ``delta`` of the summed margin with respect to its output."""
    batch = len(x)
    if isinstance(module, nn.Conv2d):
        grads = {module.weight: _conv_weight_grads(module, x, delta)}
        if module.bias is not None:
            grads[module.bias] = delta.sum((2, 3))
        return grads
    if isinstance(module, nn.Linear):
        x, delta = x.reshape(batch, -1, module.in_features), delta.reshape(batch, -1, module.out_features)
        grads = {module.weight: torch.bmm(delta.transpose(1, 2), x)}
        if module.bias is not None:
            grads[module.bias] = delta.sum(1)
        return grads
    if module.training:
        raise ValueError("BatchNorm2d must be in eval mode: in training mode it mixes the examples of a batch")
    shape = (1, -1, 1, 1)
    x_hat = (x - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
    return {module.weight: (delta * x_hat).sum((2, 3)), module.bias: delta.sum((2, 3))}


# When unfold + bmm beats a grouped convolution for per-example conv weight gradients. Measured
# on the CPU (torch 2.14, batch 128, 3x3 kernels): the grouped convolution is 2-8x faster for
# few channels at high resolution (8 -> 16 channels at 32x32: 4.9 vs 39 ms), unfold + bmm up
# to 6x faster for many channels at low resolution (64 -> 64 at 4x4: 4.4 vs 21 ms;
# 128 -> 128 at 8x8: 77 vs 140 ms).
UNFOLD_MIN_CHANNEL_PRODUCT = 4096
UNFOLD_MAX_OUTPUT_POSITIONS = 64


def _conv_weight_grads(module: nn.Conv2d, x: Tensor, delta: Tensor) -> Tensor:
    """Per-example weight gradients (B, *weight.shape) of a convolution: for each example the
    sum over output positions of its output gradient times its input patch."""
    batch, weight = len(x), module.weight
    positions = delta.shape[2] * delta.shape[3]
    if module.in_channels * module.out_channels >= UNFOLD_MIN_CHANNEL_PRODUCT and positions <= UNFOLD_MAX_OUTPUT_POSITIONS:
        patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        grad = torch.bmm(delta.reshape(batch, module.out_channels, positions), patches.transpose(1, 2))
        return grad.reshape(batch, *weight.shape)
    # The batch as convolution groups: group b correlates example b's input with its own
    # output gradient, which is example b's weight gradient.
    grad = torch.nn.grad.conv2d_weight(
        x.reshape(1, -1, *x.shape[2:]),
        (batch * weight.shape[0], *weight.shape[1:]),
        delta.reshape(1, -1, *delta.shape[2:]),
        module.stride,
        module.padding,
        module.dilation,
        groups=batch,
    )
    return grad.reshape(batch, *weight.shape)
