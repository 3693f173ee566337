"""HeliosLogs: ingest, store and search logs; replicate through a shared store."""

__version__ = "0.1.0"
__all__ = ["__version__"]
