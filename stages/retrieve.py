"""DVC stage `retrieve`: `arf retrieve` (pipeline/stages/retrieve.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, retrieve

if __name__ == "__main__":
    _command.main(retrieve.command)
