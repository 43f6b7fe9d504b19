"""The `nn` captioner: a stand-in for BLIP. No captioner's weights can be had offline, so each finetune
image gets the captions of its nearest corpus images under the base model. Those captions are real
human-written text about *similar* images, not a description of this image: they carry the style and
vocabulary of the corpus (what the text-compensated anchors are for) but can name the wrong object.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.core.captioners.registry import register_captioner
from pipeline.core.models import create_model
from pipeline.io.embeddings import load_embeddings, load_metadata


@register_captioner("nn")
class NearestNeighbourCaptioner:
    """Captions of the nearest corpus images (cosine, base model image embeddings), distinct texts only."""

    def __init__(self, model_spec: str, corpus_emb_dir: str | Path, num_captions: int = 1, batch_size: int = 64,
                 device: str = "cpu", **_):
        lm = create_model(model_spec, device=device)
        self.model, self.preprocess, self.device = lm.model.eval(), lm.preprocess, torch.device(device)
        emb = load_embeddings(corpus_emb_dir, "image")
        self.captions = list(load_metadata(Path(corpus_emb_dir) / "metadata")["caption"])
        self.corpus = F.normalize(torch.from_numpy(emb).to(self.device), dim=-1)
        self.num_captions = num_captions
        self.batch_size = batch_size

    @torch.inference_mode()
    def caption(self, images) -> list[list[str]]:
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        sims = F.normalize(self.model.encode_image(x), dim=-1) @ self.corpus.t()
        order = sims.argsort(dim=1, descending=True)
        out = []
        for row in order.tolist():
            picked: list[str] = []
            for j in row:  # the four styles of one corpus emoji share a caption: skip repeats
                if self.captions[j] not in picked:
                    picked.append(self.captions[j])
                if len(picked) == self.num_captions:
                    break
            out.append(picked)
        return out
