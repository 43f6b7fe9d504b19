"""DVC stage `pack`: `arf pack` (pipeline/stages/pack.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, pack

if __name__ == "__main__":
    _command.main(pack.command)
