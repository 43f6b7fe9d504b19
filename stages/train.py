"""DVC stage `train`: `arf train` (pipeline/stages/train.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, train

if __name__ == "__main__":
    _command.main(train.command)
