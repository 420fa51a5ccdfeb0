"""Torch-free helpers of every command line and report: the CLI conventions (one-line errors,
exit codes, progress bars) and plots. Imports only ``contracts``."""
