"""DVC stage `build_data`: the benchmark and corpus under data/: the embedded emoji default, or local
datasets with `data.source: local` (logic in pipeline/datasets/)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.datasets import build_data
from pipeline.params import load_stage_params


def main() -> None:
    params = load_stage_params("data")
    counts = build_data(Path("data"), params)
    print(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
