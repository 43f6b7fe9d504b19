"""Dataset builders. Importing this package registers the `data` params section."""
from .assets import AssetPaths
from .default import DataParams, build_default_data

__all__ = ["AssetPaths", "DataParams", "build_default_data"]
