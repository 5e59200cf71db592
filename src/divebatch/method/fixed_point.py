"""Delta(w) at one point: the fixed-point estimators (``method.diversity_estimator=fixed_point`` and
``fixed_point_train``) and the subset estimate of n * Delta they share with the shadow measurement."""

from __future__ import annotations

import contextlib
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divebatch.method.backpack_norms import backpack_hooks, backward_with_sq_norms, convert_for_backpack
from divebatch.method.diversity import EstimatorDefaults, couples_samples, sq_norm
from divebatch.method.persample import per_sample_sq_norms


def subset_n_diversity(sq_norm_sum: float, grad_sum_sq: float, k: int, n: int) -> float:
    """n * Delta of n samples, estimated from k of them drawn uniformly without replacement.

    With P = (1/k) sum_{i in K} ||g_i||^2 and Q = ||(1/k) sum_{i in K} g_i||^2, over the draw of K
    (finite-population sampling, Cochran 1977, Thm. 2.2, applied to each gradient coordinate):

        E[P] = tr(Sigma) + ||G||^2,      E[Q] = ||G||^2 + c tr(Sigma),   c = (n - k) / (k (n - 1)),

    with G and Sigma the mean and population (1/n) covariance of all n per-sample gradients. Hence
    ||G||^2_hat = (Q - c P) / (1 - c) is unbiased for ||G||^2, and by docs/protocol.md's
    n * Delta = 1 + tr(Sigma) / ||G||^2 = (tr(Sigma) + ||G||^2) / ||G||^2 the estimate is
    P / ||G||^2_hat (a ratio of unbiased parts; consistent, not unbiased). With k = n, c = 0 and it
    is exactly n * S / ||A||^2 = n * Delta (Yin et al., 2018, Def. 1).

    Args:
        sq_norm_sum: S_K = sum_{i in K} ||g_i||^2 (sum units, float).
        grad_sum_sq: ||A_K||^2 = ||sum_{i in K} g_i||^2 (sum units, float).
        k: subset size (samples), 2 <= k <= n (k = n = 1 is allowed: the whole set).
        n: training-set size (samples).
    Returns:
        n * Delta_hat (dimensionless float); ``inf`` when ||G||^2_hat <= 0, i.e. the mean gradient is
        not resolved above the sampling noise of k samples (the diversity is then at least of order k).
    Raises:
        ValueError: k outside [2, n] (unless k = n).
    """
    p = sq_norm_sum / k
    g2 = subset_mean_grad_sq(p, grad_sum_sq / (k * k), k, n)
    return p / g2 if g2 > 0 else float("inf")


def subset_mean_grad_sq(p, q, k: int, n: int):
    """Unbiased estimate of ||G||^2 from a subset: (Q - c P) / (1 - c), c = (n - k) / (k (n - 1))
    (see :func:`subset_n_diversity`; elementwise on tensors too).

    Args:
        p: P = (1/k) sum_{i in K} ||g_i||^2; q: Q = ||(1/k) sum_{i in K} g_i||^2 (floats or tensors).
        k, n: subset and training-set sizes (samples).
    Raises:
        ValueError: k outside [2, n] (unless k = n).
    """
    if k > n or (k < 2 and k != n):
        raise ValueError(f"subset size k={k!r}; allowed: an integer in [2, n={n}] or k = n")
    c = (n - k) / (k * (n - 1)) if n > 1 else 0.0
    return (q - c * p) / (1 - c)


BN_MODES = ("eval", "train")  # BatchNorm conventions of fixed_point_sums (method.fixed_point_bn)


def sample_loss_sum(out: Tensor, y: Tensor) -> Tensor:
    """Sum over the samples of each sample's mean loss: cross-entropy summed over a batch of class labels
    (``y`` (b,)), or each sequence's mean token cross-entropy summed over sequences (``y`` (b, T), ``out``
    (b, V, T)): the per-sample loss of the trainer's criterion, so that S and A of :func:`fixed_point_sums`
    are in the units of the epoch estimators' sums (their factors can be compared)."""
    if y.dim() == 1:
        return F.cross_entropy(out, y, reduction="sum")
    return F.cross_entropy(out, y, reduction="none").flatten(1).mean(1).sum()


def fixed_point_sums(
    model: nn.Module, batches, extension=None, per_sample: str = "backpack", bn_mode: str = "eval"
) -> tuple[Tensor, list[Tensor], int]:
    """S = sum_i ||g_i||^2 and A = sum_i g_i over ``batches`` at the model's current weights.

    ``bn_mode="eval"`` (the fixed-point convention): per-sample gradients of each sample's own loss,
    every BatchNorm in eval mode (the running statistics), so that g_i depends on sample i alone;
    BackPACK's ``BatchL2Grad`` (:func:`~divebatch.method.backpack_norms.batch_l2_extension`) on a sum-reduced loss gives ||g_i||^2 and
    ``p.grad`` the sum.

    ``bn_mode="train"`` (the authors' per-sample convention at frozen weights): each batch of
    ``batches`` is one BatchNorm batch. The forward runs in train mode (batch statistics of that
    batch), the backward with every BatchNorm switched to eval mode around it (:func:`~divebatch.method.backpack_norms.batchnorm_eval`),
    as the authors' trainers do for BackPACK (pytorch-cifar@7289184 ``src/train_utils.py:175-178,
    205-208, 368-378``; docs/protocol.md). Per-sample gradients of a train-mode BatchNorm network are
    not defined (a sample's output depends on the batch), so "g_i" is what BackPACK's first-order
    ``BatchL2Grad`` returns there: sample i's piece of the batch's train-mode gradient, J_i^T g_out_i
    per layer with g_out from autograd through the batch statistics (it carries the other samples'
    losses through the statistics), and for BatchNorm's own weight the running-statistics x_hat
    (docs/diversity.md, "BatchNorm: what the per-sample norms mean"). The pieces of conv and linear
    layers and of BatchNorm's bias add up to the ordinary train-mode gradient, so A is the sum of the
    batches' train-mode gradients. The running statistics and ``num_batches_tracked`` are restored
    after every batch, so each batch sees the model's statistics at the call (as a training step
    there would, whose forward updates them once before BackPACK reads them) and nothing changes.
    Without BatchNorm and dropout the two modes are the same function of w (tested).

    No augmentation of its own: ``batches`` yields the samples as given. The model's mode, ``p.grad``,
    parameters and buffers are restored (bit-identical ``state_dict``; tested).

    For models BackPACK does not cover (attention: the transformer), ``per_sample="func"`` takes
    ||g_i||^2 from :func:`divebatch.method.persample.per_sample_sq_norms` (``torch.func`` vmap of grad)
    with the same per-sample loss (:func:`sample_loss_sum`), so S and A stay in the same units.

    Args:
        model: the network (torchvision models converted by :func:`~divebatch.method.backpack_norms.convert_for_backpack`).
        batches: iterable of (x (b, ...) float on the model's device, y (b, ...) int64).
        extension: BackPACK extension writing ``p.batch_l2`` (default :func:`~divebatch.method.backpack_norms.batch_l2_extension`).
        per_sample: ``backpack`` | ``func``.
        bn_mode: ``eval`` | ``train`` (:data:`BN_MODES`).
    Returns:
        (S as a 0-d float64 tensor, A as per-parameter tensors, number of samples); units: the
        per-sample loss of :func:`sample_loss_sum`.
    Raises:
        ValueError: unknown ``bn_mode``; ``bn_mode="train"`` with ``per_sample="func"`` on a model
            with BatchNorm or dropout (vmap sees one sample at a time); an empty set of samples.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"fixed-point bn_mode={bn_mode!r}; allowed: {' | '.join(BN_MODES)}")
    if bn_mode == "train" and per_sample == "func" and couples_samples(model):
        raise ValueError(
            f"fixed-point bn_mode='train' with per_sample='func' on a model with layer {couples_samples(model)}; "
            f"allowed: per_sample='backpack' (torch.func sees one sample at a time)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    with _measurement(model, params, bn_mode) as restore_buffers:
        if per_sample == "func":
            sq, count = _func_sums(model, batches)
        else:
            sq, count = _backpack_sums(model, batches, extension, restore_buffers)
        grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    if sq is None:
        raise ValueError("fixed-point diversity over an empty set of samples; allowed: at least 2 samples")
    return sq, grads, count


@contextlib.contextmanager
def _measurement(model: nn.Module, params: list[Tensor], bn_mode: str):
    """The state of one :func:`fixed_point_sums` call: ``p.grad`` cleared and the model in ``bn_mode``
    inside; the gradients, the mode and (``train``) the buffers restored after. Yields the function that
    restores the buffers (after each train-mode batch, whose forward moved the running statistics)."""
    saved, was_training = [p.grad for p in params], model.training
    buffers = [b.detach().clone() for b in model.buffers()] if bn_mode == "train" else []

    def restore_buffers():
        with torch.no_grad():
            for b, v in zip(model.buffers(), buffers):
                b.copy_(v)

    for p in params:
        p.grad = None
    model.train(bn_mode == "train")
    try:
        yield restore_buffers
    finally:
        restore_buffers()
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)


def _func_sums(model: nn.Module, batches) -> tuple[Tensor | None, int]:
    """S (float64, None when no batch) and the sample count by ``torch.func``; A left in ``p.grad``."""
    sq, count = None, 0
    for x, y in batches:
        sample_loss_sum(model(x), y).backward()
        s = per_sample_sq_norms(model, x, y, F.cross_entropy).double().sum()
        sq = s if sq is None else sq + s
        count += len(y)
    return sq, count


def _backpack_sums(model: nn.Module, batches, extension, restore_buffers) -> tuple[Tensor | None, int]:
    """S (float64, None when no batch) and the sample count by BackPACK; A left in ``p.grad``."""
    sq, count = None, 0
    with backpack_hooks(model):
        for x, y in batches:
            loss = sample_loss_sum(model(x), y)
            # scale 1: with a sum loss BackPACK's batch_l2 is ||g_i||^2 itself
            s = backward_with_sq_norms(model, loss, 1.0, extension).double()
            restore_buffers()  # train mode: this batch's forward moved the running statistics
            sq = s if sq is None else sq + s
            count += len(y)
    return sq, count


class FixedPointDiversity(EstimatorDefaults):
    """Delta(w) at one point: the weights at the end of the measured epoch
    (``method.diversity_estimator=fixed_point``).

    The measured epoch trains exactly as an unmeasured one (no hooks, any batch split); after it,
    before the evaluation and the resize decision, :meth:`measure` takes every per-sample gradient
    at the final weights over a fixed subset of k training samples (``method.fixed_point_samples``;
    null: all n), with BatchNorm in eval mode and without augmentation (:func:`fixed_point_sums`),
    and :meth:`value` returns Delta_hat = (n * Delta_hat) / n from :func:`subset_n_diversity`
    (exactly Delta(w) of the training set when k = n).

    Why eval-mode BatchNorm: in train mode a sample's gradient depends on the other samples of its
    batch (the batch statistics), so "the gradient of sample i at w" is not defined; with the
    running statistics the network is one fixed function of w for every sample, Delta(w) is the
    diversity of its per-sample loss gradients (Yin et al., 2018, Def. 1), and it is the network
    that is evaluated. It is not the authors' mixed-mode quantity (docs/diversity.md).

    ``bn_mode="train"`` (:class:`FixedPointTrainDiversity`, ``method.diversity_estimator=fixed_point_train``)
    takes the authors' train-mode BatchNorm convention instead, at the same frozen weights
    (:func:`fixed_point_sums`): the subset (attached in a fixed random order) is cut into BatchNorm
    batches of the largest micro-batch the measured epoch trained with (:meth:`observe`), as the
    training steps' batch statistics are; nothing is updated. Why offered: in the shadow runs this
    convention alone multiplies n * Delta by a factor measured in ``estimators_bn``
    (docs/diversity.md, "BatchNorm mode, augmentation and moving iterates"), enough to change
    DiveBatch's decisions.

    Args:
        samples: k, the subset size (None: the whole training set); the subset is drawn once per
            run (:func:`divebatch.data.fixed_subset_indices`) and reused at every decision.
        extension: BackPACK extension (default :func:`~divebatch.method.backpack_norms.batch_l2_extension`).
        per_sample: ``backpack`` (default) or ``func`` (``torch.func``, for models BackPACK does not
            cover: the transformer; :func:`fixed_point_sums`).
        bn_mode: ``eval`` (default) | ``train`` (:data:`BN_MODES`).
    Raises:
        ValueError: an unknown ``per_sample`` or ``bn_mode``, or ``samples`` < 2.
    """

    uses_module_hooks: ClassVar[bool] = False  # the measured epoch itself is a plain one (torch.compile stays on)

    def __init__(self, samples: int | None = None, extension=None, per_sample: str = "backpack", bn_mode: str = "eval"):
        if per_sample not in ("backpack", "func"):
            raise ValueError(f"fixed_point per_sample={per_sample!r}; allowed: backpack | func")
        if bn_mode not in BN_MODES:
            raise ValueError(f"fixed_point bn_mode={bn_mode!r}; allowed: {' | '.join(BN_MODES)}")
        self.per_sample, self.bn_mode = per_sample, bn_mode
        if samples is not None and int(samples) < 2:
            raise ValueError(f"method.fixed_point_samples={samples!r}; allowed: null (all) or an integer >= 2")
        self.samples = None if samples is None else int(samples)
        self.extension = extension
        self.reference = None  # callable -> iterable of (x, y) batches of the fixed subset
        self.n_train: int | None = None
        self.reset()

    def prepare(self, model: nn.Module) -> nn.Module:
        return convert_for_backpack(model) if self.per_sample == "backpack" else model

    def attach(self, reference, n_train: int) -> None:
        """Give the estimator its samples.

        Args:
            reference: callable returning an iterable of (x, y) batches on the training device:
                the fixed subset, normalised, without augmentation (:func:`divebatch.data.reference_batches`).
            n_train: n, the training-set size (samples).
        """
        self.reference, self.n_train = reference, int(n_train)

    def measuring(self, model: nn.Module):
        return contextlib.nullcontext(model)

    def reset(self) -> None:
        self._value = float("nan")
        self.subset_samples = 0
        self.mean_sq_norm = self.mean_grad_sq = float("nan")
        self.bn_batch: int | None = None  # the largest micro-batch of the measured epoch (train mode)

    def observe(self, x: Tensor, y: Tensor) -> None:
        """Record the micro-batch size: the BatchNorm batch of ``bn_mode="train"`` (samples)."""
        self.bn_batch = max(self.bn_batch or 0, len(y))

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None:
        loss.backward()  # the epoch itself is not measured

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        pass

    def measure(self, model: nn.Module) -> None:
        """Compute Delta_hat at ``model``'s current weights (one host sync).

        Also sets ``mean_sq_norm`` (P = S / k, the numerator of n * Delta_hat) and ``mean_grad_sq``
        (||G||^2_hat of :func:`subset_mean_grad_sq`, the denominator), floats in squared loss-gradient
        units; ``bn_mode="train"`` without any :meth:`observe` since :meth:`reset` takes the reference's
        own batches as the BatchNorm batches.

        Raises:
            RuntimeError: :meth:`attach` was not called.
        """
        if self.reference is None:
            raise RuntimeError("fixed_point estimator: call attach(reference, n_train) before measure()")
        batches = self.reference()
        if self.bn_mode == "train" and self.bn_batch:  # BatchNorm batches of the training steps' size
            batches = rebatch(batches, self.bn_batch)
        sq, grads, k = fixed_point_sums(model, batches, self.extension, self.per_sample, self.bn_mode)
        self.subset_samples = k
        self._value = subset_n_diversity(float(sq), float(sq_norm(grads)), k, self.n_train) / self.n_train
        # the two factors of n * Delta_hat = P / ||G||^2_hat (subset_n_diversity): numerator and denominator
        self.mean_sq_norm = float(sq) / k
        self.mean_grad_sq = float(subset_mean_grad_sq(self.mean_sq_norm, float(sq_norm(grads)) / k**2, k, self.n_train))

    def value(self) -> float:
        """Delta_hat of the last :meth:`measure` (NaN before any)."""
        return self._value

    def all_reduce_(self, all_reduce_sum) -> None:
        """Data-parallel runs: every rank measured the same subset at the same weights; nothing to sum."""


class FixedPointTrainDiversity(FixedPointDiversity):
    """:class:`FixedPointDiversity` with the authors' train-mode BatchNorm convention at the epoch's final
    weights (``method.diversity_estimator=fixed_point_train``; ``bn_mode="train"``, see there). For a
    model without BatchNorm and dropout it is ``fixed_point`` itself."""

    def __init__(self, samples: int | None = None, extension=None, per_sample: str = "backpack"):
        super().__init__(samples, extension, per_sample, bn_mode="train")


def rebatch(batches, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches regrouped, in the same sample order, into batches of ``size`` samples (the last one
    smaller); at most one input batch plus ``size`` samples are held at a time.

    Raises:
        ValueError: ``size`` < 1.
    """
    if size < 1:
        raise ValueError(f"rebatch size={size!r}; allowed: an integer >= 1")
    xs, ys, have = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        have += len(y)
        while have >= size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:size], y_all[:size]
            xs, ys, have = [x_all[size:]], [y_all[size:]], have - size
    if have:
        yield torch.cat(xs), torch.cat(ys)
