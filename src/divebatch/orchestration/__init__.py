"""Running experiments: a profile (``configs/profiles/``) is a matrix of runs
(:mod:`~divebatch.orchestration.profiles`), checked and planned before any training
(:mod:`~divebatch.orchestration.plan`), trained with resume (:mod:`~divebatch.orchestration.execute`,
whose :mod:`~divebatch.orchestration.launch` starts the processes) and reported, all by
:mod:`~divebatch.orchestration.replicate`; a wandb sweep (:mod:`~divebatch.orchestration.sweeps`) is
either run by wandb agents online or becomes an experiment of that matrix
(:mod:`~divebatch.orchestration.sweep_cli`). :mod:`~divebatch.orchestration.gpu_check` and
:mod:`~divebatch.orchestration.gpu_hours` measure a GPU machine and size the paper profile.

Importing this package (and ``profiles``, ``plan``, ``execute``, ``replicate``, ``sweeps``,
``sweep_cli``, ``launch``) does not import torch.
"""
