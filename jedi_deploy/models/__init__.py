"""Models (torch): the architecture table, the zoo by source, the expert registry and importer,
the JEDI model and its bundle tensors, devices. Imports only ``contracts``."""
