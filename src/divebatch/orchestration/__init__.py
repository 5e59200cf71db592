"""Running experiments: a profile (``configs/profiles/``) is a matrix of runs, expanded, trained
with resume and reported by :mod:`~divebatch.orchestration.replicate`; a wandb sweep is either
run by wandb agents online or becomes an experiment of that matrix
(:mod:`~divebatch.orchestration.sweeps`); :mod:`~divebatch.orchestration.launch` starts the
training processes. :mod:`~divebatch.orchestration.gpu_hours` sizes the paper profile from the results
file (:mod:`~divebatch.orchestration.gpu_results`) of the GPU acceptance check, which is operations
tooling outside the package (the repository's ``gpu_check/`` folder, ``bash replicate/gpu_check.sh``).

Importing this package (and ``replicate``, ``sweeps``, ``launch``) does not import torch.
"""
