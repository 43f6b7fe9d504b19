"""DVC stage: caption the finetune images (backend from params caption.backend)."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["caption", "--finetune", "data/benchmark/finetune", "--base", "models/base", "--corpus-emb",
         "data/corpus_emb", "--out", "data/captions/captions.jsonl"])
