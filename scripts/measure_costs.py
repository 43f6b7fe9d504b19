"""Per-sample compute of each stage's model at the paper's scale, for `arf plan`.

    python scripts/measure_costs.py            # writes presets/costs.json (a few seconds, any machine)

FLOPs are counted, not estimated: torch's FlopCounterMode records every matmul / convolution / attention
op of one forward (and backward, for training) pass, run on the meta device (shapes only: no weights,
no memory, no GPU). Parameter counts come from the same instantiated architectures. What this cannot
give is wall-clock time on your GPU: `arf plan` converts FLOPs to GPU hours at a stated achieved
throughput, which you override with your own measured figure (`arf plan --tflops`).

Models: CLIP ViT-B/16 (open_clip; image 224 px, text 77 tokens), BLIP-2 OPT-2.7b (transformers'
defaults for the vision and Q-Former parts are BLIP-2's; OPT-2.7b's published sizes for the language
model) and BLIP base captioning (transformers' BlipConfig defaults are the base captioner's).
Captioning is counted as one pass over the query tokens plus a 30-token caption, which is what
generation with a KV cache computes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

CAPTION_TOKENS = 30


def _count(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def clip_costs(name: str = "ViT-B-16") -> dict:
    import open_clip

    with torch.device("meta"):
        m = open_clip.create_model(name, pretrained=None, device="meta")
    size = m.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx = m.context_length
    img = torch.empty(1, 3, size, size, device="meta")
    tok = torch.zeros(1, ctx, dtype=torch.long, device="meta")
    batch = 2

    def train_step():
        i, t, _ = m(torch.empty(batch, 3, size, size, device="meta"), torch.zeros(batch, ctx, dtype=torch.long, device="meta"))
        (i.sum() + t.sum()).backward()

    return {"params": _params(m), "image_size": size, "context_length": ctx,
            "image_forward_flops": _count(lambda: m.encode_image(img)),
            "text_forward_flops": _count(lambda: m.encode_text(tok)),
            # forward + backward of both towers per image-text pair (the contrastive loss itself is negligible)
            "train_pair_flops": _count(train_step) / batch}


def blip2_costs() -> dict:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    opt = OPTConfig(hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32, vocab_size=50272,
                    word_embed_proj_dim=2560)
    with torch.device("meta"):
        b = Blip2ForConditionalGeneration(Blip2Config(text_config=opt.to_dict()))

    def caption():
        v = b.vision_model(pixel_values=torch.empty(1, 3, 224, 224, device="meta")).last_hidden_state
        q = b.qformer(query_embeds=b.query_tokens.expand(1, -1, -1), encoder_hidden_states=v).last_hidden_state
        e = b.language_projection(q)
        n = e.shape[1] + CAPTION_TOKENS
        h = torch.empty(1, n, opt.hidden_size, device="meta")
        pos = torch.arange(n, device="meta")[None]
        for layer in b.language_model.model.decoder.layers:  # the layers directly: the causal-mask helper reads values
            out = layer(h, attention_mask=None, position_ids=pos)
            h = out[0] if isinstance(out, tuple) else out
        b.language_model.lm_head(h[:, -CAPTION_TOKENS:])

    return {"params": _params(b), "caption_flops": _count(caption), "caption_tokens": CAPTION_TOKENS}


def blip_costs() -> dict:
    from transformers import BlipConfig, BlipForConditionalGeneration

    cfg = BlipConfig()
    with torch.device("meta"):
        b = BlipForConditionalGeneration(cfg)
    size = cfg.vision_config.image_size

    def caption():
        v = b.vision_model(pixel_values=torch.empty(1, 3, size, size, device="meta")).last_hidden_state
        ids = torch.zeros(1, CAPTION_TOKENS, dtype=torch.long, device="meta")
        mask = torch.ones(1, CAPTION_TOKENS, dtype=torch.long, device="meta")  # no mask: a padding check reads values
        b.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=v)

    return {"params": _params(b), "image_size": size, "caption_flops": _count(caption), "caption_tokens": CAPTION_TOKENS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("presets/costs.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    costs = {
        "measured_with": "scripts/measure_costs.py (torch FlopCounterMode on the meta device)",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "clip": {"ViT-B-16": clip_costs("ViT-B-16")},
        "captioner": {"blip2": blip2_costs(), "blip": blip_costs()},
    }
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(costs, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(costs, indent=1))


if __name__ == "__main__":
    main()
