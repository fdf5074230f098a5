"""A tiny random CLIP text encoder saved as a local transformers folder (nothing downloaded)."""
from __future__ import annotations

import json
from pathlib import Path


def make_tiny_clip(folder: Path, hidden_size: int = 32) -> Path:
    """Save a one-layer CLIPTextModel of width `hidden_size` and a letters-only CLIP tokenizer (one
    token per letter: other characters become the unknown token) to `folder`; returns it."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77, bos_token_id=0,
                            eos_token_id=1, pad_token_id=1)
    CLIPTextModel(config).save_pretrained(folder)
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return folder
