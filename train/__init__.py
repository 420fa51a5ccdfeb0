"""Training-side stages (``jedi_deploy.train``): expert pretraining, the embedding cache builder,
JEDI training, evaluation, ablations and CKA. The files they exchange are the core's
(``jedi_deploy.contracts.cache``, ``jedi_deploy.contracts.bundle``)."""
