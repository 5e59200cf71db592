"""The GPU acceptance check: one GPU, at most 8 minutes, one results file.

``bash replicate/gpu_check.sh [--out FILE] [--wheels DIR] [--cpu-check]`` (that is, ``python -m gpu_check``
from the repository root with ``src`` on ``PYTHONPATH``) runs the checks of :data:`gpu_check.table.CHECKS`,
in that order, each as a separate process on one GPU (``--gpu ID``, default the first visible one):

1. ``gpu_tests``: the tests marked ``gpu`` (pytest, only the test files that have such tests);
2. ``cifar10_faithful``: short real-data CIFAR-10 ResNet-18 runs on the whole training set
   (50,000 images; the official ``cifar-10-batches-py/`` when present, else the JPEG copy
   ``../shared/data/cifar10-jpeg.tar.gz`` decoded once with torchvision's ``ImageFolder`` into a
   cached array file) with the protocol's configs (``configs/cifar10/divebatch.yaml``: 3 epochs,
   the third measures gradient diversity; ``adabatch.yaml``: 6 epochs doubling 128 -> 2048), giving
   the epoch time at every batch size and per method;
3. ``runs_per_gpu``: the aggregate training throughput of K runs at once on the GPU against one
   (``--runs-per-gpu 2,4``), through the launcher ``divebatch replicate --runs-per-gpu`` uses;
4. ``bench_imagenet_step``: the plain step of Tiny-ImageNet's ResNet-18 at 224 px (for the GPU-hours);
5. ``cifar10_fast``: the runs of 2 with the speed options (bf16, channels_last, torch.compile);
6. ``bench_*``: the benchmarks of ``benchmarks/`` at their GPU sizes (docs/performance.md).

Every check has a time cap and the whole command a budget (``--budget-minutes``, default 8): a
check that would not fit is skipped, and the results file says so. A check whose packages are
not importable is skipped too, naming them: the command runs with the machine's own python and
packages (a GPU image's torch and torchvision, maybe older than the pins), plus wheels carried
along for the rest (``--wheels DIR``: installed with ``pip install --no-index --no-deps --target``
into the cache, never into the system; docs/replicate.md, "GPU acceptance check").

``--cpu-check`` runs the same checks on the CPU at tiny sizes (a generated 32x32 JPEG tarball in
the CIFAR-10 layout, a narrow ResNet, one repetition, no torch.compile): what the test suite runs.

The results file (JSON, schema ``divebatch-gpu-check/1``,
:func:`divebatch.orchestration.gpu_results.validate_results`) is written after every check, so a cut
session keeps what finished. ``divebatch gpu-hours RESULTS.json`` (:mod:`divebatch.orchestration.gpu_hours`)
turns it into the GPU-hours table of ``docs/replicate.md``.

Operations tooling, not part of the ``divebatch`` package. Modules: :mod:`gpu_check.table` (the checks:
name, commands, time caps), :mod:`gpu_check.packages` (what imports here, carried wheels),
:mod:`gpu_check.cifar10` (the data), :mod:`gpu_check.checks` (how each kind of check runs and what it
reads back), :mod:`gpu_check.driver` (the budget, the results file, the command line). Every module
imports only the standard library (and ``divebatch.orchestration.gpu_results``, which does too) at the
top, so that the check can report missing packages instead of failing on them.
"""
