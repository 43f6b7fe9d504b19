"""DVC stage `build_data`: the emoji benchmark and the clip-art corpus under data/
(logic in pipeline/datasets/default.py)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets import build_default_data
from pipeline.params import load_stage_params


def main() -> None:
    params = load_stage_params("data")
    counts = build_default_data(Path("data"), params)
    print(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
