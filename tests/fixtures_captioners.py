"""Tiny, randomly initialised BLIP and BLIP-2 captioners saved to a local folder, built fully offline.

Reusable outside this test module (an end-to-end test points the caption stage at them):

    from fixtures_captioners import build_tiny_blip, build_tiny_blip2
    folder = build_tiny_blip(tmp_path / "blip")      # -> caption.model_path

Each folder is laid out like a real hub snapshot saved with `save_pretrained`: config.json,
model.safetensors, generation_config.json, preprocessor_config.json and the tokenizer files, so
`create_captioner("blip" | "blip2", model_path=folder)` loads it exactly as it would a downloaded one.

The models are random (captions are gibberish) but small (a few hundred thousand parameters): building,
saving and loading one takes well under a second on 2 CPU cores. The tokenizers' vocabularies hold
only ordinary words besides the special tokens, so every generated token decodes to visible text.
"""
from __future__ import annotations

from pathlib import Path

# Words shared by both tiny vocabularies; the prompt used in tests ("a picture of") is made of them.
WORDS = (
    "a picture of photo the an dog cat bird car tree house person man woman child red blue green "
    "small large on in with and near sitting standing running street field water sky grass table"
).split()

IMAGE_SIZE = 32
# Weight std of the random init. The configs' defaults (0.02, and 1e-10 for the vision embeddings)
# leave the image's contribution so small that every image gets the same caption; a larger std makes
# captions depend on the image, so tests can tell images (and batch mix-ups) apart.
INIT_STD = 1.0


def _tiny_vision(hidden: int = 32) -> dict:
    return dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        initializer_range=INIT_STD,
    )


def _image_processor():
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def build_tiny_blip(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random `BlipForConditionalGeneration` + `BlipProcessor` to `folder`; return it.

    Tokenizer: a `BertTokenizer` from a vocab.txt written here, plus the decoder start token "[DEC]"
    as BOS, as the real Salesforce BLIP checkpoints have it.
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizer(str(vocab), model_max_length=64)
    tok.add_special_tokens({"bos_token": "[DEC]"})

    config = BlipConfig(
        vision_config=_tiny_vision(),
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            encoder_hidden_size=32,
            initializer_range=INIT_STD,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            sep_token_id=tok.sep_token_id,
            eos_token_id=tok.sep_token_id,
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    config.initializer_range = INIT_STD
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=_image_processor(), tokenizer=tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _tiny_opt_tokenizer():
    """An OPT-style fast tokenizer (BOS == EOS == "</s>", prepended to every text) built in code."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # OPT's specials, but without OPT's plain-vocabulary "<s>", which a random model would happily emit.
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A $B", special_tokens=[("</s>", vocab["</s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=64,
    )
    # "<image>" as an added special token, as in the hub's BLIP-2 OPT tokenizers. Not through
    # `extra_special_tokens`: with that, transformers 4.57 reloads `tokenizer.image_token` as a str and
    # `Blip2Processor.__call__(text=...)` fails on `self.image_token.content`.
    tok.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return tok


def build_tiny_blip2(folder: str | Path, seed: int = 0, num_query_tokens: int = 4) -> Path:
    """Save a tiny random `Blip2ForConditionalGeneration` (OPT decoder) + `Blip2Processor`; return it.

    As in current hub exports, the config's `image_token_index` names the tokenizer's "<image>" token
    and the processor carries `num_query_tokens`, so prompts get their image placeholders.
    """
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        OPTConfig,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tiny_opt_tokenizer()
    image_token_id = tok.convert_tokens_to_ids("<image>")

    text_config = OPTConfig(
        vocab_size=len(tok),
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        init_std=INIT_STD,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = Blip2Config(
        vision_config=_tiny_vision(),
        qformer_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
        ),
        text_config=text_config.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
    )
    config.initializer_range = INIT_STD
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    processor = Blip2Processor(
        image_processor=_image_processor(), tokenizer=tok, num_query_tokens=num_query_tokens
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
