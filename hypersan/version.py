"""The version of hypersan (a module of its own: every module may import it without importing the package)."""
__version__ = "0.1.0"
