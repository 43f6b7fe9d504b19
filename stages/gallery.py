"""DVC stage: the anchor gallery, a static HTML page of anchors and captioned finetune images."""
from pipeline.cli import run

if __name__ == "__main__":
    run(["gallery", "--out", "results/gallery.html"])
