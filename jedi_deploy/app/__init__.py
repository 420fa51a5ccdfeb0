"""The application layer: the ``jedi`` CLI, the demo pipeline and its report.

This is the only code that imports the stage packages (``train``, ``export``, ``serve``);
it does so lazily inside each command, so ``jedi infer`` never loads torch.
"""
