"""DVC stage: index the corpus embeddings and retrieve k anchor pairs per seen class."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["retrieve", "--emb", "data/corpus_emb", "--prompts", "data/prompts/seen.npz",
         "--index", "data/corpus_index", "--out", "data/anchors"])
