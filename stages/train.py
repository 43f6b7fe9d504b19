"""DVC stage: finetune the base model with one method and seed (`python stages/train.py METHOD SEED`)."""
import sys

from pipeline.cli import run

if __name__ == "__main__":
    method, seed = sys.argv[1], sys.argv[2]
    run(["train", method, "--seed", seed, "--packed", "data/packed", "--base", "models/base",
         "--out", f"models/{method}/seed{seed}", "--live", f"results/train/{method}/seed{seed}"])
