"""The bottom floor: torch-free typed cards of every file kind (expert, cache, bundle, model card,
INT8 gate report, training config), errors, optional imports and the pure-numpy preprocessing rules.
Imports nothing of jedi_deploy but itself (docs/ARCHITECTURE.md, tests/test_layering.py)."""
