"""Training-side stages: expert pretraining, the embedding cache, JEDI training, evaluation."""
