"""DVC stage: embed the seen class prompts with the base text tower."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["embed-prompts", "--classes", "data/benchmark/classes.json", "--base", "models/base", "--out",
         "data/prompts/seen.npz", "--split", "seen"])
