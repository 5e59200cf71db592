"""The method: DiveBatch's resize rule, the gradient-diversity estimators, and the controller
that applies them to a training loop (the library API, ``divebatch.BatchSizeController``).

- :mod:`~divebatch.method.policies`: batch-size policies (SGD, AdaBatch, DiveBatch) and the
  learning-rate rescaling rule;
- :mod:`~divebatch.method.diversity`: gradient diversity and its estimators (the authors' epoch
  estimator, micro-batch, fixed point), behind the ``DiversityEstimator`` protocol;
- :mod:`~divebatch.method.persample`: per-sample gradient norms (BackPACK, torch.func) that the
  estimators use;
- :mod:`~divebatch.method.controller`: ``BatchSizeController``, what the trainer and a user's
  own loop call each epoch;
- :mod:`~divebatch.method.shadow`: shadow measurements of every estimator beside Delta(w)
  during a run (the estimator study).
"""
