"""DVC stage `caption`: `arf caption` (pipeline/stages/caption.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, caption

if __name__ == "__main__":
    _command.main(caption.command)
