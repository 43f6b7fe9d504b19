"""DVC stage `report`: `arf report` (pipeline/stages/report.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, report

if __name__ == "__main__":
    _command.main(report.command)
