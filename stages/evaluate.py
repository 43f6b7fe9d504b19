"""DVC stage `evaluate`: `arf evaluate` (pipeline/stages/evaluate.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, evaluate

if __name__ == "__main__":
    _command.main(evaluate.command)
