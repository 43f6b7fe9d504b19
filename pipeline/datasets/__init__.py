"""Dataset builders. Importing this package registers the `data` params section."""
from pathlib import Path

from .assets import AssetPaths
from .default import DataParams, build_default_data
from .local import import_local_data


def build_data(out_root: Path, params: DataParams) -> dict:
    """benchmark/, corpus/ and corpus_heldout/ under out_root, from the source params.yaml names."""
    if params.source == "local":
        return import_local_data(out_root, params.local)
    return build_default_data(out_root, params)


__all__ = ["AssetPaths", "DataParams", "build_data", "build_default_data", "import_local_data"]
