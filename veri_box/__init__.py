"""veri-box: the Veri Studio training API on a lab's own machines."""

__version__ = "0.1.0"
