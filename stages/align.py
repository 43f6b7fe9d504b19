"""DVC stage `align`: `arf align` (pipeline/stages/align.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, align

if __name__ == "__main__":
    _command.main(align.command)
