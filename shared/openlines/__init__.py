"""openlines: the shared package every openlines service imports."""

__version__ = "0.1.0"
