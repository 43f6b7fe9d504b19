"""DVC stage: score the base model and every trained method on all eval sets -> results/."""
import sys

from pipeline.cli import run

if __name__ == "__main__":
    methods = sys.argv[1:]
    run(["evaluate", "zeroshot=models/base", *[f"{m}=models/{m}" for m in methods],
         "--eval-root", "data/benchmark/eval", "--out", "results"])
