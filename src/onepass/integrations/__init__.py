"""Framework integrations for :mod:`onepass.optim`.

Each submodule imports its framework only when it is imported itself, so
``import onepass`` never needs them:

* :mod:`onepass.integrations.lightning` (``pip install 'onepass[lightning]'``):
  ``OnepassCallback``, for a ``LightningModule`` whose ``configure_optimizers``
  returns a ``onepass.optim`` optimizer;
* :mod:`onepass.integrations.transformers` (``pip install 'onepass[transformers]'``):
  ``tune(trainer)``, which makes a ``transformers.Trainer`` tune its learning
  rate and weight decay with ``onepass.optim.AdamW``.
"""
