"""DVC stage `embed_prompts`: `arf embed_prompts` (pipeline/stages/embed_prompts.py) on the arguments dvc.yaml gives."""
from pipeline.stages import _command, embed_prompts

if __name__ == "__main__":
    _command.main(embed_prompts.command)
