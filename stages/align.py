"""DVC stage: align the default base model LiT-style on the corpus."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["align", "--corpus", "data/corpus", "--out", "models/base"])
