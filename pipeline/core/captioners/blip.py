"""The BLIP / BLIP-2 captioners for the text-compensated anchors.

ARF re-captions the finetune images with a pretrained captioner, so that each image also has rich,
caption-like text (the paper's reviews name BLIP-2). "blip" (`BlipForConditionalGeneration`) and
"blip2" (`Blip2ForConditionalGeneration`) load from a LOCAL folder only. There is no network access,
ever: a hub id, a missing folder or an incomplete one fails at once with one line that says what to
provide.

Decoding (`decoding="auto"`, the default): one caption per image is decoded greedily; several
(`num_captions > 1`) are drawn by nucleus sampling (top_p 0.9). Why:
- greedy is deterministic and does not depend on how images are batched, which keeps the caption
  stage's output a pure function of its inputs for DVC;
- for several captions, beam search's `num_return_sequences` best beams are near-duplicates that differ
  by a word or two, so they add little text diversity; the anchors are there to give *diverse*,
  caption-like text. BLIP's own CapFilt found nucleus-sampled synthetic captions better for training
  than beam-searched ones for the same reason. `decoding="beam"` is available for ablations.
  Sampling is seeded (`seed`, advanced once per generate call), so a rerun with the same inputs,
  order and batch size reproduces the captions; a different batch size draws different samples.

Other choices, each a keyword argument: `min_new_tokens=1` and the suppression of special tokens
other than EOS (the image placeholder, padding, unknown, BOS...) guarantee that a caption decodes to
visible text; the prompt's tokens are cut from the generated sequence before decoding, so captions
never start with the prompt.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from pipeline.core.captioners.registry import register_captioner
from pipeline.core.encode import batched

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")


_LFS_POINTER = b"version https://git-lfs"


def _is_lfs_pointer(path: Path) -> bool:
    try:
        if path.stat().st_size > 1024:
            return False
        with path.open("rb") as f:
            return f.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False


def _check_model_folder(
    model_path: Any, backend: str, model_types: tuple[str, ...], family: str, example: str
) -> Path:
    """Return `model_path` as a Path if it is a complete local folder for `backend`, else raise ValueError.

    Decided from the files on disk alone; every failure is one line that says what to provide.
    """
    todo = (
        f"download {family} (e.g. {example}: `huggingface-cli download {example} --local-dir DIR`) on a "
        "machine with internet and point caption.model_path at the folder holding config.json, the model "
        "weights and the processor files (preprocessor_config.json and the tokenizer)"
    )
    if model_path is None or str(model_path).strip() == "":
        raise ValueError(f"captioner {backend!r}: model_path is not set; {todo}")
    path = Path(str(model_path)).expanduser()
    where = f"captioner model_path {str(model_path)!r}"
    if not path.exists():
        kind = "not a local folder (hub ids are never downloaded: the pipeline runs offline)"
        raise ValueError(f"{where}: {kind}; {todo}")
    if not path.is_dir():
        raise ValueError(f"{where}: is a file, not a folder; {todo}")

    missing: list[str] = []
    if not (path / "config.json").is_file():
        missing.append("config.json")

    weights = [path / n for n in _WEIGHT_FILES if (path / n).is_file()]
    indexes = [path / n for n in _WEIGHT_INDEXES if (path / n).is_file()]
    if not weights and not indexes:
        missing.append("model weights (model.safetensors, pytorch_model.bin or a sharded *.index.json)")
    for w in weights:
        if _is_lfs_pointer(w):
            raise ValueError(
                f"{where}: {w.name} is a git-lfs pointer, not the weights (cloned without git-lfs); "
                f"run `git lfs pull` in that folder or {todo}"
            )
    for idx in indexes:
        try:
            shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{where}: unreadable {idx.name} ({type(e).__name__}: {e}); {todo}") from None
        absent = [s for s in shards if not (path / s).is_file()]
        if absent:
            missing.append(f"weight shards {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}")
        elif any(_is_lfs_pointer(path / s) for s in shards):
            raise ValueError(f"{where}: weight shards are git-lfs pointers; run `git lfs pull` there or {todo}")

    if not (path / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json (image processor)")
    if not any((path / n).is_file() for n in _TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(_TOKENIZER_FILES)})")
    if missing:
        raise ValueError(f"{where}: incomplete {backend} folder, missing {'; '.join(missing)}; {todo}")

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{where}: unreadable config.json ({type(e).__name__}: {e}); {todo}") from None
    if model_type not in model_types:
        owner = {"blip": "blip", "blip-2": "blip2"}.get(str(model_type))
        use = f"; use captioner {owner!r} for it" if owner and owner != backend else ""
        raise ValueError(
            f"{where}: config.json has model_type {model_type!r}, captioner {backend!r} needs "
            f"{' or '.join(repr(t) for t in model_types)}{use}"
        )
    return path


_DTYPES = {
    "fp32": "float32", "float32": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}  # fmt: skip


_DECODINGS = ("auto", "greedy", "beam", "sample")


def _resolve_device(device: str | None, backend: str) -> str:
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or not (device == "cpu" or device.split(":")[0] == "cuda"):
        raise ValueError(f"captioner {backend!r}: device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"captioner {backend!r}: device {device!r} asked for but CUDA is not available here")
    return device


def _resolve_dtype(dtype: Any, device: str, backend: str):
    import torch

    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        name = _DTYPES[dtype.lower()]
    else:
        raise ValueError(f"captioner {backend!r}: dtype must be one of fp32, fp16, bf16, got {dtype!r}")
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"captioner {backend!r}: dtype must be one of fp32, fp16, bf16, got {dtype!r}")
    if name == "float16" and device == "cpu":
        raise ValueError(f"captioner {backend!r}: dtype fp16 needs a GPU (device is cpu); use fp32 or bf16")
    return getattr(torch, name)


def _dtype_kwarg() -> str:
    # transformers 4.56 renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns).
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class _TransformersCaptioner:
    """Shared machinery of the BLIP-family backends (local load, batching, decoding, prompt strip)."""

    backend: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    family: ClassVar[str]  # for messages: "BLIP"
    hub_example: ClassVar[str]  # a hub id to download, for messages
    model_class: ClassVar[str]

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 16,
        max_new_tokens: int = 30,
        min_new_tokens: int = 1,
        num_captions: int = 1,
        decoding: str = "auto",
        num_beams: int = 3,
        top_p: float = 0.9,
        temperature: float = 1.0,
        seed: int = 0,
        prompt: str | None = None,
        device: str | None = "auto",
        dtype: Any = "fp32",
    ) -> None:
        """
        model_path: local folder with config.json, the weights, preprocessor_config.json and the
            tokenizer (a `save_pretrained` / `huggingface-cli download --local-dir` folder).
        batch_size: images per generate() call.
        max_new_tokens / min_new_tokens: caption length in tokens, prompt excluded.
        num_captions: captions per image (`num_return_sequences`).
        decoding: "auto" (greedy for one caption, nucleus sampling for several), "greedy", "beam"
            (`num_beams`, at least num_captions, returning the best beams) or "sample" (`top_p`,
            `temperature`, `seed`).
        prompt: text the caption continues (e.g. "a picture of"); cut from the returned captions.
        device: "auto" (cuda when available), "cpu" or "cuda[:N]".
        dtype: "fp32" (default), "bf16", or "fp16" (GPU only).
        """
        b = self.backend

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"captioner {b!r}: {what}")

        for key, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens),
                           ("num_captions", num_captions), ("num_beams", num_beams)):  # fmt: skip
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{key} must be an integer >= 1, got {value!r}")  # fmt: skip
        need(isinstance(min_new_tokens, int) and 0 <= min_new_tokens <= max_new_tokens,
             f"min_new_tokens must be an integer in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens!r}")  # fmt: skip
        need(decoding in _DECODINGS, f"decoding must be one of {', '.join(_DECODINGS)}, got {decoding!r}")
        need(isinstance(top_p, (int, float)) and 0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p!r}")
        need(isinstance(temperature, (int, float)) and temperature > 0, f"temperature must be > 0, got {temperature!r}")
        need(isinstance(seed, int), f"seed must be an integer, got {seed!r}")
        need(prompt is None or isinstance(prompt, str), f"prompt must be a string or null, got {prompt!r}")
        if decoding == "auto":
            decoding = "greedy" if num_captions == 1 else "sample"
        need(not (decoding == "greedy" and num_captions > 1),
             f"greedy decoding gives one caption per image, got num_captions={num_captions}; use decoding 'sample' or 'beam'")  # fmt: skip

        self.model_path = _check_model_folder(model_path, b, self.model_types, self.family, self.hub_example)
        self.device = _resolve_device(device, b)
        self.dtype = _resolve_dtype(dtype, self.device, b)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.num_captions = num_captions
        self.decoding = decoding
        self.num_beams = num_beams
        self.top_p = float(top_p)
        self.temperature = float(temperature)
        self.seed = seed
        self.prompt = prompt.strip() if prompt and prompt.strip() else None
        self._calls = 0
        self._load()

    # -- loading -----------------------------------------------------------------------------------

    def _load(self) -> None:
        import transformers

        folder = str(self.model_path)
        where = f"captioner model_path {folder!r}"
        try:
            self.image_processor = transformers.AutoImageProcessor.from_pretrained(
                folder, local_files_only=True, use_fast=False
            )
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model_cls = getattr(transformers, self.model_class)
            model = model_cls.from_pretrained(folder, local_files_only=True, **{_dtype_kwarg(): self.dtype})
        except Exception as e:  # corrupt weights, unreadable tokenizer, version mismatch...: one line
            raise ValueError(f"{where}: could not load {self.backend} from it ({_first_line(e)})") from e
        self.model = model.to(self.device).eval()
        self._setup()

    # Set by _setup(): token ids fed to generate() after the image (None: let generate() start from
    # BOS), the ids the output echoes before the new tokens, and the token ids kept out of captions.
    _prefix_ids: list[int] | None
    _echoed_prefix: Any
    _suppress: list[int]

    def _setup(self) -> None:
        """Backend-specific: set _prefix_ids, _echoed_prefix and _suppress."""
        raise NotImplementedError

    def _suppress_ids(self, keep: set[int], extra: Iterable[int | None] = ()) -> list[int]:
        vocab = self.model.config.text_config.vocab_size
        ids = set(self.tokenizer.all_special_ids) | {i for i in extra if i is not None}
        return sorted(i for i in ids - keep if i is not None and 0 <= i < vocab)

    # -- generation --------------------------------------------------------------------------------

    def describe(self) -> dict:
        """Settings that determine the captions (for provenance records)."""
        return {
            "captioner": self.backend,
            "model_path": str(self.model_path),
            "model_class": self.model_class,
            "prompt": self.prompt,
            "num_captions": self.num_captions,
            "decoding": self.decoding,
            "num_beams": self.num_beams if self.decoding == "beam" else None,
            "top_p": self.top_p if self.decoding == "sample" else None,
            "temperature": self.temperature if self.decoding == "sample" else None,
            "seed": self.seed if self.decoding == "sample" else None,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "batch_size": self.batch_size,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def _generate_kwargs(self) -> dict:
        kw: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            suppress_tokens=self._suppress or None,
            num_return_sequences=self.num_captions,
        )
        if self.decoding == "greedy":
            kw.update(do_sample=False, num_beams=1)
        elif self.decoding == "beam":
            kw.update(do_sample=False, num_beams=max(self.num_beams, self.num_captions))
        else:  # nucleus sampling; top_k=0 turns off the generation config's default top-k of 50
            kw.update(do_sample=True, num_beams=1, top_p=self.top_p, top_k=0, temperature=self.temperature)
        return kw

    def caption(self, images: list[Image.Image]) -> list[list[str]]:
        out: list[list[str]] = []
        for chunk in batched(images, self.batch_size):
            out.extend(self._caption_batch(chunk))
        return out

    def _caption_batch(self, images: list[Image.Image]) -> list[list[str]]:
        import torch

        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.dtype)
        n = len(rgb)
        prefix = None
        if self._prefix_ids is not None:
            prefix = torch.tensor([self._prefix_ids] * n, dtype=torch.long, device=self.device)
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.seed + self._calls)
            self._calls += 1
            sequences = self.model.generate(**self._model_inputs(pixels, prefix), **self._generate_kwargs())
        sequences = sequences.cpu()
        # Cut the prompt off by tokens when the output echoes it (decoder-only and BLIP decoders do);
        # an encoder-decoder LM (BLIP-2 Flan-T5) returns only new tokens, so nothing is cut there.
        echoed = self._echoed_prefix.cpu()
        k = echoed.numel()
        strip_tokens = k > 0 and sequences.shape[1] >= k and bool((sequences[:, :k] == echoed).all())
        if strip_tokens:
            sequences = sequences[:, k:]
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        texts = [self._clean(t, strip_prompt_text=not strip_tokens) for t in texts]
        m = self.num_captions
        return [texts[i * m : (i + 1) * m] for i in range(n)]

    def _clean(self, text: str, strip_prompt_text: bool) -> str:
        text = " ".join(text.split())
        if strip_prompt_text and self.prompt:
            p = " ".join(self.prompt.split())
            if text.lower().startswith(p.lower()):
                text = text[len(p) :]
        return text.strip()

    def _rng_devices(self) -> list[int]:
        import torch

        if self.device.startswith("cuda"):
            return [torch.device(self.device).index or 0]
        return []

    def _model_inputs(self, pixels, prefix) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_path={str(self.model_path)!r}, device={self.device!r}, decoding={self.decoding!r})"


@register_captioner("blip")
class BlipCaptioner(_TransformersCaptioner):
    """BLIP (Li et al. 2022) image captioning: `BlipForConditionalGeneration` from a local folder.

    E.g. Salesforce/blip-image-captioning-base or -large, saved to disk. The optional `prompt`
    ("a picture of" is BLIP's own) conditions the text decoder and is removed from the captions.
    """

    backend = "blip"
    model_types = ("blip",)
    family = "BLIP"
    hub_example = "Salesforce/blip-image-captioning-base"
    model_class = "BlipForConditionalGeneration"

    def _setup(self) -> None:
        import torch

        text_cfg = self.model.config.text_config
        bos, sep = text_cfg.bos_token_id, text_cfg.sep_token_id
        if self.prompt:
            # BLIP's generate() overwrites the first token ([CLS]) with BOS ([DEC]) and drops the last
            # ([SEP]); the decoder's output starts with what is left.
            ids = self.tokenizer(self.prompt).input_ids
            self._prefix_ids = ids
            echoed = [bos, *ids[1:-1]]
        else:
            self._prefix_ids = None
            echoed = [bos]
        self._echoed_prefix = torch.tensor(echoed, dtype=torch.long)
        # BLIP's generate() stops at SEP (its EOS); every other special token is kept out of captions.
        self._suppress = self._suppress_ids(keep={sep}, extra=[bos, text_cfg.pad_token_id])

    def _model_inputs(self, pixels, prefix) -> dict:
        if prefix is None:  # generate() starts from [BOS] itself
            return {"pixel_values": pixels}
        return {"pixel_values": pixels, "input_ids": prefix, "attention_mask": prefix.new_ones(prefix.shape)}


@register_captioner("blip2")
class Blip2Captioner(_TransformersCaptioner):
    """BLIP-2 (Li et al. 2023) captioning: `Blip2ForConditionalGeneration` from a local folder.

    E.g. Salesforce/blip2-opt-2.7b (the captioner the ARF reviews name), saved to disk. Needs a
    config with `image_token_index` (hub exports since transformers 4.47): the image's query tokens
    fill `num_query_tokens` placeholder tokens put in front of the text. The input ids are built here
    rather than by `Blip2Processor` (placeholders + tokenized prompt, or + BOS without a prompt, the
    same as the processor and `generate()` build), which avoids processor-version quirks.
    """

    backend = "blip2"
    model_types = ("blip-2",)
    family = "BLIP-2"
    hub_example = "Salesforce/blip2-opt-2.7b"
    model_class = "Blip2ForConditionalGeneration"

    def _setup(self) -> None:
        import torch

        cfg = self.model.config
        image_token = getattr(cfg, "image_token_index", None)
        if image_token is None:
            raise ValueError(
                f"captioner model_path {str(self.model_path)!r}: config.json has no image_token_index "
                "(exported before transformers 4.47); download the current hub revision of the model"
            )
        text_cfg = cfg.text_config
        if self.prompt:
            text_ids = self.tokenizer(self.prompt).input_ids
        elif text_cfg.bos_token_id is not None and not text_cfg.is_encoder_decoder:
            text_ids = [text_cfg.bos_token_id]
        else:
            text_ids = self.tokenizer("").input_ids
        self._prefix_ids = [image_token] * cfg.num_query_tokens + list(text_ids)
        # A decoder-only LM echoes the whole prefix; an encoder-decoder one echoes nothing.
        echoed = [] if text_cfg.is_encoder_decoder else self._prefix_ids
        self._echoed_prefix = torch.tensor(echoed, dtype=torch.long)
        eos = {i for i in (text_cfg.eos_token_id, self.tokenizer.eos_token_id) if i is not None}
        self._suppress = self._suppress_ids(keep=eos, extra=[image_token, text_cfg.pad_token_id])

    def _model_inputs(self, pixels, prefix) -> dict:
        return {"pixel_values": pixels, "input_ids": prefix, "attention_mask": prefix.new_ones(prefix.shape)}
