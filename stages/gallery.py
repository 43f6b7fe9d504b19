"""DVC stage `gallery`: `arf gallery` (pipeline/stages/gallery.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, gallery

if __name__ == "__main__":
    _command.main(gallery.command)
