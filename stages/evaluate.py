"""DVC stage: score one model along its WiSE-FT curve (`python stages/evaluate.py METHOD SEED`), or the
base model once (`python stages/evaluate.py zeroshot`) -> results/eval/."""
import sys

from pipeline.cli import run

if __name__ == "__main__":
    method = sys.argv[1]
    if method == "zeroshot":
        run(["evaluate", "models/base", "--alphas", "0", "--tag", "method=zeroshot", "--out", "results/eval/zeroshot.jsonl"])
    else:
        seed = sys.argv[2]
        run(["evaluate", f"models/{method}/seed{seed}", "--tag", f"method={method}", "--tag", f"seed={seed}",
             "--out", f"results/eval/{method}/seed{seed}.jsonl"])
