"""DVC stage `zeroshot`: `arf zeroshot` (pipeline/stages/zeroshot.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, zeroshot

if __name__ == "__main__":
    _command.main(zeroshot.command)
