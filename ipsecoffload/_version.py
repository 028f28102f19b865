"""The package version, in one place: pyproject.toml reads it from here (setuptools dynamic
version) and ``ipsecoffload.__version__`` re-exports it."""
__version__ = "0.1.0"
