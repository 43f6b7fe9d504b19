"""DVC stage `build_data`: `arf build_data` (pipeline/stages/build_data.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, build_data

if __name__ == "__main__":
    _command.main(build_data.command)
