"""Paired comparison of two models on every eval set: accuracy difference and exact McNemar p-value.

Per-set standard errors overstate the noise of a *difference* between two models scored on the same
images; this is the test to use for "does A lose accuracy against B on this set". Each model scores
as in the results table (a classifier head where it has one for the set's classes, else its text tower).

    python scripts/paired_test.py models/base models/flyp/seed0 [--eval-root data/benchmark/eval]
"""
import argparse
from pathlib import Path

from pipeline.core.models import create_model, model_dir_spec, read_head
from pipeline.core.scoring import mcnemar_p
from pipeline.core.wise import Scorer
from pipeline.io.eval_sets import read_eval_sets


def scorer(model_dir: Path):
    lm = create_model(model_dir_spec(model_dir))
    head = read_head(model_dir)
    return lm, Scorer(lm.model, lm.tokenizer, head), None if head is None else head["weight"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_a", type=Path)
    ap.add_argument("model_b", type=Path)
    ap.add_argument("--eval-root", type=Path, default=Path("data/benchmark/eval"))
    args = ap.parse_args()
    (la, a, ha), (_, b, hb) = scorer(args.model_a), scorer(args.model_b)
    na, nb = str(args.model_a), str(args.model_b)
    print(f"| set | n | {na} | {nb} | diff | {na} only right | {nb} only right | McNemar p |\n|---|---|---|---|---|---|---|---|")
    for es in read_eval_sets(args.eval_root, la.preprocess):
        ra = a.logits(es, ha).argmax(1) == es.labels
        rb = b.logits(es, hb).argmax(1) == es.labels
        t = mcnemar_p(ra, rb)
        acc_a, acc_b = 100 * ra.float().mean().item(), 100 * rb.float().mean().item()
        print(f"| {es.name} | {len(es.labels)} | {acc_a:.1f} | {acc_b:.1f} | {acc_b - acc_a:+.1f} | {t['a_only']} | "
              f"{t['b_only']} | {t['p']:.3f} |")


if __name__ == "__main__":
    main()
