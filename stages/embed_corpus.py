"""DVC stage `embed_corpus`: `arf embed_corpus` (pipeline/stages/embed_corpus.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, embed_corpus

if __name__ == "__main__":
    _command.main(embed_corpus.command)
