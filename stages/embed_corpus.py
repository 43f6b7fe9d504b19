"""DVC stage: embed the corpus with clip-retrieval's inference and the base model."""
from pipeline.cli import run

if __name__ == "__main__":  # required: clip-retrieval spawns helper processes that re-import this file
    run(["embed-corpus", "--corpus", "data/corpus", "--base", "models/base", "--out", "data/corpus_emb"])
