"""Running experiments: a profile (``configs/profiles/``) is a matrix of runs, expanded, trained
with resume and reported by :mod:`~divebatch.orchestration.replicate`; a wandb sweep is either
run by wandb agents online or becomes an experiment of that matrix
(:mod:`~divebatch.orchestration.sweeps`); :mod:`~divebatch.orchestration.launch` starts the
training processes. :mod:`~divebatch.orchestration.gpu_check` and
:mod:`~divebatch.orchestration.gpu_hours` measure a GPU machine and size the paper profile.

Importing this package (and ``replicate``, ``sweeps``, ``launch``) does not import torch.
"""
