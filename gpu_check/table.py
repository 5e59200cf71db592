"""The checks of the acceptance check, in the order they run (the GPU-hours inputs first): name, what
it measures, the packages it needs, its commands at GPU and at CPU sizes, its time cap.

A command is the arguments of ``python`` (run from the repository root), written as one string and
split with :func:`shlex.split`; ``{data}`` stands for the CIFAR-10 overrides of the prepared data
(:func:`gpu_check.cifar10.prepare_cifar10`), ``{out}`` for the run directory, ``{seed}`` for the
seed of each of K concurrent runs. ``kind`` says how :mod:`gpu_check.checks` runs the commands and
what it reads back:

* ``pytest``: the tests marked ``gpu`` of the test files that have such tests, into a JUnit file;
* ``train``: each command is one ``divebatch train`` run (named by its config file); its
  ``metrics.csv`` gives the epoch times;
* ``runs_per_gpu``: the command K times at once through the launcher, for every K of
  ``--runs-per-gpu`` and K = 1; no cap but the budget;
* ``bench``: a script of ``benchmarks/`` with ``--csv FILE``; the CSV's rows go into the results file.

Sizes: GPU sizes from docs/performance.md, trimmed to fit the budget; CPU sizes (``--cpu-check``) tiny.
"""

from __future__ import annotations

from dataclasses import dataclass

# the packages (import names) each kind of work needs (gpu_check.packages.PACKAGES names their wheels)
TRAIN = ("torch", "torchvision", "numpy", "PIL", "omegaconf", "yaml", "tqdm")  # divebatch train (SGD, AdaBatch)
DIVE = TRAIN + ("backpack", "einops", "unfoldNd")  # + DiveBatch's exact estimator
BENCH = DIVE + ("pandas", "tabulate")  # benchmarks/ (tables through pandas' to_markdown)
TESTS = DIVE + ("pandas", "pytest")

KINDS = ("pytest", "train", "runs_per_gpu", "bench")


@dataclass(frozen=True)
class Check:
    """One row of :data:`CHECKS`.

    Attributes:
        name: the check's name (``--only``, the results file).
        kind: how it runs (:data:`KINDS`).
        what: what it measures, in words.
        needs: import names it needs; missing ones skip it, naming them.
        min_s: skipped when less than this is left of the budget (seconds; GPU sizes).
        cap_s: each command's time cap (seconds); None: the budget only.
        gpu: the commands at GPU sizes; cpu: at CPU sizes (``--cpu-check``).
        cpu_cap_s: the cap at CPU sizes (None: ``cap_s``).
        cpu_note: what the results say about the CPU sizes (``--cpu-check``), if anything.
    """

    name: str
    kind: str
    what: str
    needs: tuple[str, ...]
    min_s: float
    cap_s: float | None
    gpu: tuple[str, ...]
    cpu: tuple[str, ...]
    cpu_cap_s: float | None = None
    cpu_note: str = ""

    def commands(self, cpu_check: bool) -> tuple[str, ...]:
        return self.cpu if cpu_check else self.gpu

    def cap(self, cpu_check: bool) -> float | None:
        return self.cpu_cap_s if cpu_check and self.cpu_cap_s is not None else self.cap_s


_PYTEST = "-m pytest -m gpu -p no:cacheprovider -q"
_TRAIN = "-m divebatch train configs/cifar10/{config}.yaml {{data}} wandb.mode=disabled progress=false"
_FAST = "speed.bf16=true speed.channels_last=true"
_CPU_MODEL = "device=cpu model.name=resnet_small model.width=4"
_DIVEBATCH, _ADABATCH = "epochs=3 method.resize_freq=3", "epochs=6 method.resize_freq=1"
_K_RUNS = "-m divebatch train configs/cifar10/sgd_small.yaml {{data}} data.train_subset={subset} epochs=3 wandb.mode=disabled progress=false"
_GPU, _CPU = "--device cuda --threads 0", "--device cpu --threads 1 --reps 1"


def _train(config: str, *overrides: str) -> str:
    return " ".join([_TRAIN.format(config=config), *overrides, "out_dir={out}"])


CHECKS: tuple[Check, ...] = (
    Check("gpu_tests", "pytest", "the tests marked gpu", TESTS, 30, 150, (_PYTEST,), (_PYTEST,)),
    Check(
        "cifar10_faithful",
        "train",
        "CIFAR-10 ResNet-18 on the whole training set, the protocol's settings: epoch time per method",
        DIVE,
        60,
        240,
        gpu=(_train("divebatch", _DIVEBATCH), _train("adabatch", _ADABATCH)),
        cpu=(_train("divebatch", _CPU_MODEL, _DIVEBATCH), _train("adabatch", _CPU_MODEL, _ADABATCH)),
    ),
    Check(
        "runs_per_gpu",
        "runs_per_gpu",
        "throughput of K runs per GPU against one",
        TRAIN,
        45,
        None,
        gpu=(_K_RUNS.format(subset=20000) + " seed={seed} out_dir={out}",),
        cpu=(_K_RUNS.format(subset=256) + f" {_CPU_MODEL} seed={{seed}} out_dir={{out}}",),
    ),
    Check(
        "bench_imagenet_step",
        "bench",
        "Tiny-ImageNet's ResNet-18 step at 224 px (plain and exact estimator)",
        BENCH,
        20,
        60,
        gpu=(
            f"benchmarks/diversity_cost.py {_GPU} --models resnet18_imagenet --image-size 224 --batch-sizes 256 "
            "--reps 3 --cases exact",
        ),
        cpu=(
            f"benchmarks/diversity_cost.py {_CPU} --models resnet_small --image-size 32 --batch-sizes 4 --cases exact",
        ),
    ),
    Check(
        "cifar10_fast",
        "train",
        "the same runs with the speed options (bf16, channels_last, torch.compile)",
        DIVE,
        90,
        240,
        gpu=(
            _train("divebatch", _FAST, "speed.compile=true", _DIVEBATCH),
            _train("adabatch", _FAST, "speed.compile=true", _ADABATCH),
        ),
        cpu=(
            _train("divebatch", _FAST, "speed.compile=false", _CPU_MODEL, _DIVEBATCH),
            _train("adabatch", _FAST, "speed.compile=false", _CPU_MODEL, _ADABATCH),
        ),
        cpu_note="speed.compile=false in --cpu-check (compiling takes minutes on a CPU)",
    ),
    Check(
        "bench_throughput",
        "bench",
        "(d) throughput against batch size",
        BENCH,
        20,
        60,
        gpu=(
            f"benchmarks/throughput.py {_GPU} --model resnet18_cifar --width 64 --batch-sizes 128,256,512,1024,2048 "
            "--reps 3",
        ),
        cpu=(f"benchmarks/throughput.py {_CPU} --model resnet_small --width 4 --batch-sizes 8,16",),
    ),
    Check(
        "bench_divebatch_overhead",
        "bench",
        "(e) whole-run DiveBatch overhead",
        BENCH,
        30,
        90,
        gpu=(
            f"benchmarks/divebatch_overhead.py {_GPU} --n 5085 --model resnet18_cifar --width 64 "
            "--initial-batch-size 128 --max-batch-size 2048 --epochs 20",
        ),
        cpu=(
            f"benchmarks/divebatch_overhead.py {_CPU} --n 64 --width 4 --epochs 2 --resize-freq 2 "
            "--initial-batch-size 16 --max-batch-size 64",
        ),
    ),
    Check(
        "bench_diversity_cost",
        "bench",
        "(a) cost of the diversity measurement",
        BENCH,
        20,
        60,
        gpu=(
            f"benchmarks/diversity_cost.py {_GPU} --models resnet18_cifar --batch-sizes 128,512,2048 --reps 5 "
            "--cases exact,exact_stock_conv,authors_style",
        ),
        cpu=(f"benchmarks/diversity_cost.py {_CPU} --models linear --batch-sizes 8 --cases exact",),
    ),
    Check(
        "bench_microbatch_cost",
        "bench",
        "(b) micro-batch estimator cost",
        BENCH,
        20,
        60,
        gpu=(f"benchmarks/microbatch_cost.py {_GPU} --models resnet18_cifar --batch-sizes 128,512,2048 --reps 5",),
        cpu=(f"benchmarks/microbatch_cost.py {_CPU} --models linear --batch-sizes 8 --ks 2",),
    ),
    Check(
        "bench_data_path",
        "bench",
        "(c) data path",
        BENCH,
        15,
        45,
        gpu=(f"benchmarks/data_path.py {_GPU} --n 5085 --width 64 --model resnet18_cifar --reps 3",),
        cpu=(f"benchmarks/data_path.py {_CPU} --n 64 --width 4 --batch-size 16",),
        cpu_cap_s=60,
    ),
)
NAMES = tuple(c.name for c in CHECKS)
