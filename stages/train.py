"""DVC stage: finetune the base model with one method (`python stages/train.py METHOD`)."""
import sys

from pipeline.cli import run

if __name__ == "__main__":
    method = sys.argv[1]
    run(["train", method, "--packed", "data/packed", "--base", "models/base", "--out", f"models/{method}",
         "--live", f"results/train/{method}"])
