"""Media: PyAV decoding (clips, long videos, rotation, seeking), datasets and video lists, the
synthetic benchmark. Imports only ``contracts``; no torch."""
