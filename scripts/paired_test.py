"""Paired comparison of two models on every eval set: accuracy difference and exact McNemar p-value.

Per-set standard errors overstate the noise of a *difference* between two models scored on the same
images; this is the test to use for "does A lose accuracy against B on this set".

    python scripts/paired_test.py models/base models/flyp [--eval-root data/benchmark/eval]
"""
import argparse
from pathlib import Path

from pipeline.evaluate import mcnemar_p, read_eval_set, zeroshot_logits
from pipeline.models import create_model, model_dir_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a", type=Path)
    ap.add_argument("model_b", type=Path)
    ap.add_argument("--eval-root", type=Path, default=Path("data/benchmark/eval"))
    args = ap.parse_args()
    a, b = create_model(model_dir_spec(args.model_a)), create_model(model_dir_spec(args.model_b))
    print(f"| set | n | {args.model_a.name} | {args.model_b.name} | diff | {args.model_a.name} only right | "
          f"{args.model_b.name} only right | McNemar p |\n|---|---|---|---|---|---|---|---|")
    for root in sorted(p for p in args.eval_root.iterdir() if (p / "classnames.txt").is_file()):
        es = read_eval_set(root, a.preprocess)
        ra = zeroshot_logits(a.model, a.tokenizer, es).argmax(1) == es.labels
        rb = zeroshot_logits(b.model, b.tokenizer, es).argmax(1) == es.labels
        t = mcnemar_p(ra, rb)
        acc_a, acc_b = 100 * ra.float().mean().item(), 100 * rb.float().mean().item()
        print(f"| {es.name} | {len(es.labels)} | {acc_a:.1f} | {acc_b:.1f} | {acc_b - acc_a:+.1f} | {t['a_only']} | "
              f"{t['b_only']} | {t['p']:.3f} |")


if __name__ == "__main__":
    main()
