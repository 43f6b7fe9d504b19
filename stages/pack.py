"""DVC stage: pack finetune samples, ID validation split and anchors into training shards."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["pack", "--finetune", "data/benchmark/finetune", "--val", "data/benchmark/val", "--captions",
         "data/captions/captions.jsonl", "--anchors", "data/anchors/anchors.jsonl", "--corpus",
         "data/corpus", "--classes", "data/benchmark/classes.json", "--out", "data/packed"])
