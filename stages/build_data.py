"""DVC stage `build_data`: the benchmark and corpus under data/: the embedded emoji default, or local
datasets with `data.source: local` (logic in pipeline/datasets/)."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["build-data", "--out", "data"])
