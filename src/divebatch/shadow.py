"""Shadow measurement: every gradient-diversity estimator at the resize points of a run that does not
use them (``shadow.enabled=true`` on an ``sgd`` or ``adabatch`` run; docs/diversity.md, "Estimator study").

At each epoch e with (e + 1) % ``method.resize_freq`` == 0 (where DiveBatch would decide):

* the epoch trains with :class:`ShadowEstimators`: the authors' epoch estimator (``exact``, BackPACK
  per-sample norms at the iterates of the epoch, on the run's own unsplit steps) and the two-scale
  ``microbatch`` estimator on the same steps' samples (an extra split forward/backward per step
  that leaves the update unchanged);
* at the weights w at the end of that epoch (before the lr scheduler step), the ``fixed_point``
  estimate over its fixed subset of ``method.fixed_point_samples`` samples (timed), and one pass
  over the **whole** training set in chunks (:func:`chunk_sums`) giving Delta(w) itself and, from
  the Gram matrix of the chunk gradient sums, the sampling error of the subset estimate for every
  size in ``shadow.subset_sizes`` (:func:`subset_errors`);
* at the same weights, the BatchNorm / augmentation decomposition (:meth:`ShadowRecorder.bn_decomposition`):
  n * Delta over the same fixed subset under four conventions, numerator and denominator apart,
  (i) eval-mode BatchNorm, no augmentation (the ``fixed_point`` estimate above), (ii) the authors'
  train-mode convention at frozen weights (:func:`divebatch.method.fixed_point.fixed_point_sums` with
  ``bn_mode="train"``: BatchNorm batches of the run's micro-batch size, batch statistics, nothing
  updated), no augmentation, (iii) the same with the run's training augmentation, and (iv) the
  authors' epoch estimator of the epoch (moving iterates). The ratios (ii)/(i), (iii)/(ii) and
  (iv)/(iii) are the factors of BatchNorm mode, augmentation and moving iterates
  (:func:`divebatch.analysis.estimators.bn_table`; docs/diversity.md, "BatchNorm mode, augmentation
  and moving iterates").

Rows go to ``shadow.csv`` (one per resize point) and ``shadow_subsets.csv`` (one per point and
subset size) in the run directory; they are also kept in the checkpoint, so a resumed run rewrites
them exactly. Units: n * Delta (samples; dimensionless ratio times n), seconds, samples.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divebatch import augment, rundir
from divebatch.data import DeviceLoader, _eval_view, fixed_subset_indices, reference_batches
from divebatch.method.backpack_norms import backpack_hooks
from divebatch.method.diversity import EstimatorDefaults, sq_norm
from divebatch.method.exact import ExactDiversity
from divebatch.method.fixed_point import FixedPointDiversity, fixed_point_sums, subset_mean_grad_sq, subset_n_diversity
from divebatch.method.microbatch import MicroBatchDiversity
from divebatch.method.persample import FuncDiversity

SHADOW_COLUMNS = [
    "epoch",
    "lr",
    "batch_size",
    "n_train",
    "n_delta_exact",
    "n_delta_microbatch",
    "n_delta_fixed_point",
    "fixed_point_samples",
    "n_delta_full",
    "fixed_point_s",
    "full_pass_s",
    "measured_epoch_s",
    "exact_mean_sq_norm",
    "exact_mean_grad_sq",
    "full_mean_sq_norm",
    "full_mean_grad_sq",
    # the decomposition (ShadowRecorder.bn_decomposition); files written before it lack these columns
    "fixed_point_mean_sq_norm",
    "fixed_point_mean_grad_sq",
    "bn_batch",
    "n_delta_train_bn",
    "train_bn_mean_sq_norm",
    "train_bn_mean_grad_sq",
    "n_delta_train_bn_aug",
    "train_bn_aug_mean_sq_norm",
    "train_bn_aug_mean_grad_sq",
    "train_bn_s",
]
# n * Delta = (mean_i ||g_i||^2) / ||mean_i g_i||^2: the last four columns are these two factors for the epoch
# estimator (S / n and ||A||^2 / n^2 over the epoch's iterates) and for Delta(w) (whole set, one point), so a
# ratio of estimates splits into its numerator part (per-sample norms) and its denominator part (mean gradient).
# The decomposition's columns: (i) fixed_point_* (eval-mode BatchNorm, no augmentation, the fixed subset: P and
# the subset-corrected ||G||^2_hat of subset_n_diversity), (ii) *train_bn* (train-mode convention at frozen
# weights, same subset, no augmentation), (iii) *train_bn_aug* (the same with the run's training augmentation),
# (iv) n_delta_exact / exact_* (the authors' epoch estimator); bn_batch: samples per BatchNorm batch in (ii)/(iii).
SUBSET_COLUMNS = [
    "epoch",
    "subset_samples",
    "draws",
    "n_delta_full",
    "rel_bias",
    "rel_sd",
    "rel_p90_abs_err",
    "share_inf",
]


class ShadowEstimators(EstimatorDefaults):
    """The ``exact`` and ``microbatch`` epoch estimators on the same optimizer steps of one epoch.

    The update is the run's own: each step's backward is the exact estimator's (BackPACK
    per-sample norms of the unsplit step, as a DiveBatch run at this batch size measures them;
    for models BackPACK does not cover, ``backpack=False``, the ``exact_func`` estimator's
    ``torch.func`` norms, as a DiveBatch run of the transformer profile measures them).
    After it, before ``optimizer.step()``, the step's samples (captured by a forward hook on the
    model and by :meth:`criterion`) are split as :meth:`MicroBatchDiversity.micro_batch_sizes`
    plans and fed to the microbatch estimator, one extra forward and backward per step in train
    mode (micro-batch BatchNorm statistics, as in a DiveBatch run with ``microbatch``); the step's
    gradient and the BatchNorm running statistics are restored afterwards, so the run trains as
    it would without the shadow.
    """

    uses_module_hooks: ClassVar[bool] = True

    def __init__(self, micro_batches: int = 2, backpack: bool = True):
        self.backpack = bool(backpack)
        self.exact = ExactDiversity() if self.backpack else FuncDiversity()
        self.micro = MicroBatchDiversity(micro_batches)
        self._x: list[Tensor] = []
        self._y: list[Tensor] = []
        self._capturing = False

    def prepare(self, model: nn.Module) -> nn.Module:
        return self.exact.prepare(model)

    @contextlib.contextmanager
    def measuring(self, model: nn.Module):
        def grab(module, inputs):
            if self._capturing:
                self._x.append(inputs[0].detach())

        handle = model.register_forward_pre_hook(grab)
        self._capturing = True
        try:
            with backpack_hooks(model) if self.backpack else contextlib.nullcontext(model):
                yield model
        finally:
            self._capturing = False
            handle.remove()

    def criterion(self, base):
        """``base`` (the loss on (logits, y)) that also records y of each micro-batch of the step."""

        def loss(out, y):
            if self._capturing:
                self._y.append(y.detach())
            return base(out, y)

        return loss

    def reset(self) -> None:
        self.exact.reset()
        self.micro.reset()
        self._x, self._y = [], []

    def observe(self, x: Tensor, y: Tensor) -> None:
        self.exact.observe(x, y)  # exact_func recomputes the micro-batch's per-sample gradients

    def backward(self, model: nn.Module, loss: Tensor, batch_size: int, sample_scale: float | None = None) -> None:
        capturing, self._capturing = self._capturing, False  # exact_func's own forwards are not the step's inputs
        try:
            self.exact.backward(model, loss, batch_size, sample_scale)
        finally:
            self._capturing = capturing

    def step_end(self, model: nn.Module, batch_size: int) -> None:
        self.exact.step_end(model, batch_size)
        x, y = torch.cat(self._x), torch.cat(self._y)
        self._x, self._y = [], []
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        buffers = [b.clone() for b in model.buffers()]
        for p in params:
            p.grad = None
        self._capturing = False
        try:
            sizes = self.micro.micro_batch_sizes(batch_size, batch_size)
            for xm, ym in zip(x.split(sizes), y.split(sizes)):
                self.micro.backward(model, F.cross_entropy(model(xm), ym) * (len(ym) / batch_size), batch_size)
            self.micro.step_end(model, batch_size)
        finally:
            self._capturing = True
            for p, g in zip(params, saved):
                p.grad = g
            with torch.no_grad():
                for b, v in zip(model.buffers(), buffers):
                    b.copy_(v)


def chunk_sums(model: nn.Module, batches, per_sample: str = "backpack") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-chunk S_j = sum_{i in j} ||g_i||^2 and A_j = sum_{i in j} g_i at the current weights
    (eval-mode BatchNorm, no augmentation: :func:`divebatch.method.fixed_point.fixed_point_sums` per chunk).

    Args:
        batches: iterable of (x, y) chunks (each chunk is one unit of the subset draws).
        per_sample: ``backpack`` | ``func`` (models BackPACK does not cover).
    Returns:
        (S (J,) float64, Gram (J, J) float64 with Gram_jl = A_j . A_l, sizes (J,) int64).
    """
    s, a, sizes = [], [], []
    for x, y in batches:
        sq, grads, k = fixed_point_sums(model, [(x, y)], per_sample=per_sample)
        s.append(float(sq))
        a.append(torch.cat([g.reshape(-1) for g in grads]).double())
        sizes.append(k)
    mat = torch.stack(a)
    return np.array(s), (mat @ mat.T).cpu().numpy(), np.array(sizes)


def subset_errors(
    s: np.ndarray, gram: np.ndarray, sizes: np.ndarray, n: int, subset_sizes, draws: int, seed: int
) -> list[dict]:
    """Sampling error of the ``fixed_point`` subset estimate against the whole set's n * Delta(w).

    Subsets are unions of m chunks drawn without replacement from the chunks of one random
    partition of the training set into equal chunks (so each subset is marginally a uniform
    random subset of size m * chunk); per draw the estimate is :func:`subset_n_diversity` of the
    subset's S and ||A||^2 = sum of the Gram block.

    Args:
        s, gram, sizes: from :func:`chunk_sums` over the whole training set (equal-size chunks
            first; a smaller last chunk only enters the whole-set value).
        n: training-set size; subset_sizes: sizes to evaluate (rounded down to whole chunks;
            sizes >= n skipped); draws: subsets per size; seed: the draws' generator seed.
    Returns:
        one row per size: ``subset_samples``, ``draws``, ``n_delta_full`` (exact, whole set),
        ``rel_bias`` (median estimate / exact - 1), ``rel_sd`` (sd of finite estimates / exact),
        ``rel_p90_abs_err`` (90th percentile of |estimate / exact - 1|, inf counted as inf),
        ``share_inf`` (share of draws whose mean gradient was not resolved).
    """
    full = subset_n_diversity(float(s.sum()), float(gram.sum()), int(sizes.sum()), n)
    c = int(sizes[0])
    whole = np.flatnonzero(sizes == c)
    rng = np.random.default_rng(seed)
    rows = []
    for k in subset_sizes:
        m = int(k) // c
        if m < 1 or m * c >= n or m > len(whole):
            continue
        est = np.empty(draws)
        for d in range(draws):
            pick = rng.choice(whole, size=m, replace=False)
            est[d] = subset_n_diversity(float(s[pick].sum()), float(gram[np.ix_(pick, pick)].sum()), m * c, n)
        finite = est[np.isfinite(est)]
        rel = np.where(np.isfinite(est), est / full - 1, np.inf)
        rows.append(
            {
                "subset_samples": m * c,
                "draws": draws,
                "n_delta_full": full,
                "rel_bias": float(np.median(est) / full - 1) if len(finite) else math.inf,
                "rel_sd": float(finite.std(ddof=1) / full) if len(finite) > 1 else math.nan,
                "rel_p90_abs_err": float(np.quantile(np.abs(rel), 0.9)),
                "share_inf": float(1 - len(finite) / draws),
            }
        )
    return rows


def train_mode_batches(bundle, indices: Tensor, batch_size: int, device: torch.device, augmented: bool, seed: int):
    """Training samples ``indices``, in that order, in batches of ``batch_size`` (the last one smaller, as
    the training loader's), normalised; with ``augmented`` the run's training augmentation, else none.

    The batches are the BatchNorm batches of the decomposition's train-mode conventions (ii) and (iii)
    (:meth:`ShadowRecorder.bn_decomposition`). The augmentation is the training loader's: on the device
    path ``augment.AUGMENTATIONS[bundle.augment]`` from a generator seeded by ``seed``, on the DataLoader
    path the training set's own transform (which holds the augmentation iff ``data.augment``) under a
    forked global torch RNG seeded by ``seed``. Every call yields the same draws; the training's
    generators and the global RNG are left as they were.

    Args:
        bundle: the data set; indices: (k,) int64 sample indices; batch_size: samples per batch.
        augmented: apply the run's training augmentation (``data.augment`` of the run); seed: its draws.
    Returns:
        a callable returning a fresh iterator of (x float32 (b, ...) on ``device``, y int64 (b, ...)).
    """
    if bundle.arrays is not None:
        fn = augment.AUGMENTATIONS[bundle.augment] if augmented else None
        x, y = bundle.arrays[0][indices], bundle.arrays[1][indices]
        loader = DeviceLoader(x, y, batch_size, bundle.mean, bundle.std, device, fn, False, None)

        def device_batches():
            loader.generator = torch.Generator(device=device).manual_seed(seed) if fn is not None else None
            return iter(loader)

        return device_batches
    ds = bundle.train_set if augmented else _eval_view(bundle.train_set, bundle.test_set.transform)
    subset = torch.utils.data.Subset(ds, indices.tolist())

    def loader_batches():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
            for xb, yb in loader:
                yield xb.to(device), yb.to(device)

    return loader_batches


class ShadowRecorder:
    """The trainer's side of the shadow measurement (``shadow.*`` keys, :class:`divebatch.config.ShadowConfig`).

    Args:
        cfg: the ``shadow`` config section; fixed_point_samples: ``method.fixed_point_samples``
            (the fixed-point estimator's subset, None: all); bundle: the data; device: training device;
        seed: the run's seed (fixed subset, partitions, draws); resize_freq: ``method.resize_freq``;
        max_micro_batch: chunk limit for the reference passes (``method.max_micro_batch``);
        augmented: the run trains with augmentation (``data.augment``): convention (iii) applies it;
        backpack: False for models BackPACK does not cover (``config.NO_BACKPACK_MODELS``): every
            per-sample norm then comes from ``torch.func`` (exact_func, fixed_point with ``func``).
    """

    def __init__(
        self,
        cfg,
        fixed_point_samples: int | None,
        bundle,
        device: torch.device,
        seed: int,
        resize_freq: int,
        max_micro_batch: int,
        augmented: bool = False,
        backpack: bool = True,
    ):
        self.cfg, self.bundle, self.device, self.seed = cfg, bundle, device, int(seed)
        self.resize_freq, self.n = int(resize_freq), bundle.n_train
        self.max_micro_batch, self.augmented = int(max_micro_batch), bool(augmented)
        self.per_sample = "backpack" if backpack else "func"
        self.fixed = FixedPointDiversity(fixed_point_samples, per_sample=self.per_sample)
        self.subset = fixed_subset_indices(self.n, fixed_point_samples, seed)
        self.fixed.attach(reference_batches(bundle, self.subset, max_micro_batch, device), self.n)
        self.estimators = ShadowEstimators(backpack=backpack)
        self.rows: list[dict] = []
        self.subset_rows: list[dict] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        return self.estimators.prepare(model)

    def epoch_estimator(self, epoch: int):
        """The combined estimator for a resize epoch (reset), else None."""
        if (epoch + 1) % self.resize_freq:
            return None
        self.estimators.reset()
        return self.estimators

    def bn_decomposition(self, model: nn.Module, epoch: int, bn_batch: int) -> dict:
        """Conventions (ii) and (iii) of the decomposition at the current weights (module docstring).

        Over the fixed subset of (i) (``method.fixed_point_samples``), in a random order drawn from the
        run's seed and the epoch (as a training epoch's batches are random, not sorted), cut into
        BatchNorm batches of ``bn_batch`` samples; per-sample pieces by
        :func:`divebatch.method.fixed_point.fixed_point_sums` with ``bn_mode="train"`` (its docstring
        defines them: the authors' convention, at frozen weights, running statistics restored);
        n * Delta from :func:`divebatch.method.fixed_point.subset_n_diversity` as in (i). (iii) uses the
        same order and batches with the run's training augmentation (:func:`train_mode_batches`, its
        own generator), so (iii)/(ii) differs only by the augmentation.

        Args:
            bn_batch: samples per BatchNorm batch: the run's micro-batch in the measured epoch
                (``min(batch_size, method.max_micro_batch)`` unless the trainer says otherwise).
        Returns:
            the ``bn_batch``, ``n_delta_train_bn*``, ``train_bn*_mean_sq_norm`` (P, numerator),
            ``train_bn*_mean_grad_sq`` (||G||^2_hat, denominator) and ``train_bn_s`` (seconds) columns.
        """
        t0 = time.perf_counter()
        perm = torch.randperm(len(self.subset), generator=torch.Generator().manual_seed(self.seed * 1_000_033 + epoch))
        order = self.subset[perm]
        row = {"bn_batch": int(bn_batch)}
        for name, augmented in (("train_bn", False), ("train_bn_aug", self.augmented)):
            batches = train_mode_batches(
                self.bundle, order, int(bn_batch), self.device, augmented, self.seed * 1_000_037 + epoch
            )
            sq, grads, k = fixed_point_sums(model, batches(), per_sample=self.per_sample, bn_mode="train")
            p, q = float(sq) / k, float(sq_norm(grads)) / k**2
            row[f"n_delta_{name}"] = subset_n_diversity(float(sq), q * k**2, k, self.n)
            row[f"{name}_mean_sq_norm"] = p
            row[f"{name}_mean_grad_sq"] = float(subset_mean_grad_sq(p, q, k, self.n))
        row["train_bn_s"] = time.perf_counter() - t0
        return row

    def record(
        self,
        model: nn.Module,
        epoch: int,
        lr: float,
        batch_size: int,
        measured_epoch_s: float,
        bn_batch: int | None = None,
    ) -> dict:
        """Everything at the current weights (the end of a resize epoch); appends and returns the row.

        Args:
            bn_batch: samples per BatchNorm batch of the measured epoch's steps (the trainer's largest
                micro-batch); None: ``min(batch_size, method.max_micro_batch)``.
        """
        t0 = time.perf_counter()
        self.fixed.measure(model)
        t1 = time.perf_counter()
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        batches = reference_batches(self.bundle, order, self.cfg.chunk, self.device)
        s, gram, sizes = chunk_sums(model, batches(), self.per_sample)
        t2 = time.perf_counter()
        decomposition = self.bn_decomposition(model, epoch, bn_batch or min(batch_size, self.max_micro_batch))
        subsets = subset_errors(
            s, gram, sizes, self.n, list(self.cfg.subset_sizes), self.cfg.draws, self.seed * 7 + epoch
        )
        full = subset_n_diversity(float(s.sum()), float(gram.sum()), self.n, self.n)
        row = {
            "epoch": epoch,
            "lr": lr,
            "batch_size": batch_size,
            "n_train": self.n,
            "n_delta_exact": self.estimators.exact.value() * self.n,
            "n_delta_microbatch": self.estimators.micro.value() * self.n,
            "n_delta_fixed_point": self.fixed.value() * self.n,
            "fixed_point_samples": self.fixed.subset_samples,
            "n_delta_full": full,
            "fixed_point_s": t1 - t0,
            "full_pass_s": t2 - t1,
            "measured_epoch_s": measured_epoch_s,
            "exact_mean_sq_norm": float(self.estimators.exact.sq_norm_sum) / self.n,
            "exact_mean_grad_sq": float(sum(g.double().pow(2).sum() for g in self.estimators.exact.grad_sum))
            / self.n**2,
            "full_mean_sq_norm": float(s.sum()) / self.n,
            "full_mean_grad_sq": float(gram.sum()) / self.n**2,
            "fixed_point_mean_sq_norm": self.fixed.mean_sq_norm,
            "fixed_point_mean_grad_sq": self.fixed.mean_grad_sq,
            **decomposition,
        }
        self.rows.append(row)
        self.subset_rows += [{"epoch": epoch, **r} for r in subsets]
        return row

    def state_dict(self) -> dict:
        return {"rows": list(self.rows), "subset_rows": list(self.subset_rows)}

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}
        self.rows, self.subset_rows = list(state.get("rows", [])), list(state.get("subset_rows", []))

    def write(self, run_dir: Path, atomic_write) -> None:
        """``shadow.csv`` and ``shadow_subsets.csv`` in ``run_dir`` (through the trainer's atomic writer)."""
        import pandas as pd

        for name, rows, cols in (
            (rundir.SHADOW, self.rows, SHADOW_COLUMNS),
            (rundir.SHADOW_SUBSETS, self.subset_rows, SUBSET_COLUMNS),
        ):
            df = pd.DataFrame(rows, columns=cols)
            atomic_write(Path(run_dir) / name, lambda p, df=df: df.to_csv(p, index=False))
