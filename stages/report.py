"""DVC stage: the results table, WiSE-FT curves and plots from results/eval/ -> results/."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["report", "--eval-dir", "results/eval", "--out", "results"])
