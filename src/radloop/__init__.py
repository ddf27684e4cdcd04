"""radloop: medical-imaging AI in the clinical loop."""

__version__ = "0.1.0"
