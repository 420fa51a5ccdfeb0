"""``python -m jedi_deploy`` = the ``jedi`` command (also ``torchrun -m jedi_deploy cache ...``)."""
from .app.cli import main

if __name__ == "__main__":
    main()
