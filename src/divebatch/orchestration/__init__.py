"""Running experiments: a profile (``configs/profiles/``) is a matrix of runs
(:mod:`~divebatch.orchestration.profiles`), checked and planned before any training
(:mod:`~divebatch.orchestration.plan`), trained with resume (:mod:`~divebatch.orchestration.execute`,
whose :mod:`~divebatch.orchestration.launch` starts the processes) and reported, all by
:mod:`~divebatch.orchestration.replicate`; a wandb sweep (:mod:`~divebatch.orchestration.sweeps`) is
either run by wandb agents online or becomes an experiment of that matrix
(:mod:`~divebatch.orchestration.sweep_cli`). :mod:`~divebatch.orchestration.gpu_hours` sizes the
paper profile from the results file (:mod:`~divebatch.orchestration.gpu_results`) of the GPU
acceptance check, which is operations tooling outside the package (the repository's ``gpu_check/``
folder, ``bash replicate/gpu_check.sh``).

Importing this package (and ``profiles``, ``plan``, ``execute``, ``replicate``, ``sweeps``,
``sweep_cli``, ``launch``) does not import torch.
"""
