"""MedSeg-R neural priors: the frozen text encoder and the cognitive / perceptual stages."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_clip import make_tiny_clip

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.priors.modules import ATTRIBUTES, PRIORS, MedSegRPriors
from MedSegAdaptLib.priors.text_encoder import MINILM_NAME, TextEncoder

SMALL = {"text_dim": 16, "dim": 32, "heads": 4}  # toy-sized stages for the training tests


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: on a busy CPU, syncing intra-op threads costs more than they save (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def backbone():
    from MedSegAdaptLib.models import load_backbone

    return load_backbone()


def _random_tokens(batch: int, text_dim: int, lengths=(4, 6, 3), seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = {}
    for name, length in zip(ATTRIBUTES, lengths):
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[0, length - 1:] = False  # the first sample's texts are one token shorter
        tokens[name] = (torch.randn(batch, length, text_dim, generator=generator), mask)
    return tokens


def _open_gates(model: MedSegRPriors, value: float = 0.5) -> None:
    """Make the gates non-zero, as after some training."""
    with torch.no_grad():
        for gate in ("perceptual_gate", "semantic_gate"):
            if hasattr(model.perceptual, gate):
                getattr(model.perceptual, gate).scale.fill_(value)


@pytest.fixture()
def forward_calls(encoder):
    """Batch sizes of the text model's forward calls during the test."""
    calls: list[int] = []
    hook = encoder.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    yield calls
    hook.remove()


# --- text encoder -------------------------------------------------------------------------------------------

def test_text_encoder_shapes_mask_and_identity(encoder):
    texts = ["left lung", "spiculated nodule in the right lower lobe of the lung"]
    tokens, mask = encoder.encode_tokens(texts)
    lengths = [len(encoder.tokenizer(t)["input_ids"]) for t in texts]
    assert encoder.dim == 384
    assert tokens.shape == (2, max(lengths), 384) and tokens.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == lengths
    assert tokens.device.type == "cpu" and not tokens.requires_grad
    assert torch.all(tokens[0, lengths[0]:] == 0) and torch.all(tokens[0, :lengths[0]].abs().sum(-1) > 0)
    weights = encoder.folder / "model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    assert encoder.identity == f"{MINILM_NAME}@{expected}"
    assert all(not p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training


def test_text_encoder_cache_and_distinct_texts(encoder, forward_calls):
    calls = forward_calls
    first, first_mask = encoder.encode_tokens(["cache probe: ground glass", "cache probe: ground glass"])
    assert calls == [1]  # the duplicate is encoded once
    assert torch.equal(first[0], first[1])
    first[0].fill_(7.0)  # the caller's tensor is not the cache's
    again, again_mask = encoder.encode_tokens(["cache probe: ground glass"])
    assert calls == [1]
    assert torch.equal(again[0], first[1]) and torch.equal(again_mask[0], first_mask[1])
    mixed, _ = encoder.encode_tokens(["cache probe: lobulated", "cache probe: ground glass"])
    assert calls == [1, 1]  # only the new text went through the model
    count = int(again_mask[0].sum())
    assert torch.equal(mixed[1, :count], again[0, :count]) and not mixed[1, count:].any()
    length = min(mixed.shape[1], again.shape[1])
    assert not torch.allclose(mixed[0, :length], again[0, :length], atol=1e-3)


def test_text_encoder_semantic_similarity(encoder):
    tokens, mask = encoder.encode_tokens(["left lung", "left pulmonary lobe", "lumbar vertebra"])
    weights = mask.float().unsqueeze(-1)
    pooled = F.normalize((tokens * weights).sum(1) / weights.sum(1), dim=-1)
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert similar > unrelated + 0.2, (similar, unrelated)


def test_clip_bad_paths_raise_input_error(tmp_path, encoder):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(InputError, match="no-such-clip"):
        TextEncoder.from_path(missing)
    a_file = tmp_path / "clip.bin"
    a_file.write_bytes(b"not a model")
    with pytest.raises(InputError, match="clip.bin"):
        TextEncoder.from_path(a_file)
    with pytest.raises(InputError, match="model_type 'bert'"):
        TextEncoder.from_path(encoder.folder)  # a BERT model, not CLIP
    no_weights = tmp_path / "clip-no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    with pytest.raises(InputError, match="clip-no-weights.*no weights"):
        TextEncoder.from_path(no_weights)
    (no_weights / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="could not be loaded"):
        TextEncoder.from_path(no_weights)


def test_clip_text_encoder_from_local_folder(tmp_path):
    folder = make_tiny_clip(tmp_path / "tiny-clip")
    clip = TextEncoder.from_path(folder)
    tokens, mask = clip.encode_tokens(["rib", "left lung"])
    assert clip.dim == 32 and tokens.shape == (2, mask.shape[1], 32)
    assert mask.sum(1).tolist() == [5, 10]  # start + letters + end
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
    assert clip.identity == f"clip-text:tiny-clip@{digest}"


# --- cognitive and perceptual stages ------------------------------------------------------------------------

def test_parameter_count_is_modest():
    model = MedSegRPriors()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_untrained_priors_return_the_embedding_bitwise(encoder):
    torch.manual_seed(0)
    model = MedSegRPriors()
    embedding = torch.randn(2, 256, 64, 64)
    texts = {"location": "left upper lobe", "texture": "ground glass opacity", "shape": "round, 12 mm"}
    tokens = {name: encoder.encode_tokens([text]) for name, text in texts.items()}
    for training in (True, False):
        model.train(training)
        assert torch.equal(model(embedding, tokens), embedding)
    attention = model.attention_map
    assert attention.shape == (2, 1, 64, 64) and not attention.requires_grad
    assert attention.min() > 0 and attention.max() < 1


def test_untrained_priors_give_the_backbone_masks(backbone):
    """LiteMedSAM decodes the modulated embedding of an untrained MedSeg-R to exactly its own masks."""
    yy, xx = np.mgrid[:256, :256]
    disk = ((yy - 120) ** 2 + (xx - 110) ** 2 < 40 ** 2).astype(np.float32)
    image = torch.from_numpy(0.2 + 0.6 * disk)[None, None].expand(1, 3, 256, 256).contiguous()
    box = torch.tensor([[60.0, 70.0, 160.0, 170.0]])
    model = MedSegRPriors().eval()
    with torch.no_grad():
        embedding = backbone.encode(image)
        modulated = model(embedding, _random_tokens(1, 384))
        logits, iou = backbone.decode(embedding, boxes=box)
        logits_modulated, iou_modulated = backbone.decode(modulated, boxes=box)
    assert torch.equal(logits, logits_modulated) and torch.equal(iou, iou_modulated)
    mask = logits[0, 0] > 0
    assert 0.5 < float(mask.float().sum()) / float(disk.sum()) < 1.5  # a real mask of the disk


def test_training_opens_the_gates_and_reaches_every_submodule():
    torch.manual_seed(0)
    model = MedSegRPriors(**SMALL)
    embedding = torch.randn(2, 32, 16, 16)
    tokens = _random_tokens(2, 16)
    target = embedding + torch.randn_like(embedding)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # gates open at step 1, deform offsets leave zero at step 2
        optimizer.zero_grad()
        F.mse_loss(model(embedding, tokens), target).backward()
        optimizer.step()
    without_gradient = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert without_gradient == []
    for gate in (model.perceptual.perceptual_gate, model.perceptual.semantic_gate):
        assert gate.scale.abs().min() > 0
    assert model.perceptual.shape_offsets.weight.any()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(embedding, tokens), embedding)


def test_switching_a_prior_off_removes_its_branch():
    torch.manual_seed(0)
    embedding = torch.randn(2, 32, 16, 16)
    tokens = _random_tokens(2, 16)
    model = MedSegRPriors(**SMALL).eval()
    _open_gates(model)
    without_texture = [p for p in PRIORS if p != "texture"]
    model(embedding, tokens, use=without_texture).square().sum().backward()
    assert all(p.grad is None for p in model.perceptual.texture_kernels.parameters())
    assert all(p.grad.any() for p in model.perceptual.shape_kernels.parameters())
    with torch.no_grad():
        out = model(embedding, tokens, use=without_texture)
        for p in model.perceptual.texture_kernels.parameters():
            p.add_(1.0)
        assert torch.equal(model(embedding, tokens, use=without_texture), out)
        assert not torch.allclose(model(embedding, tokens), out)
        model(embedding, tokens, use=("texture", "semantic"))
        assert model.attention_map is None

    built_without = MedSegRPriors(**SMALL, use=("location", "semantic"))
    assert not hasattr(built_without.perceptual, "texture_kernels")
    assert not hasattr(built_without.perceptual, "shape_offsets")
    assert sum(p.numel() for p in built_without.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="shape"):
        built_without(embedding, tokens, use=("shape",))
    with pytest.raises(ValueError, match="colour"):
        MedSegRPriors(**SMALL, use=("colour",))


def test_each_sample_gets_its_own_priors_and_one_set_broadcasts():
    """Folding the batch into channels (texture, deform) must not mix samples."""
    torch.manual_seed(0)
    model = MedSegRPriors(**SMALL).eval()
    _open_gates(model)
    with torch.no_grad():
        model.perceptual.shape_offsets.bias.fill_(0.37)  # fractional offsets: real deformable sampling
        model.perceptual.shape_offsets.weight.normal_(0, 0.05)
        embedding = torch.randn(3, 32, 16, 16)
        tokens = _random_tokens(3, 16, seed=1)
        batched = model(embedding, tokens)
        for i in range(3):
            alone = model(embedding[i:i + 1], {k: (t[i:i + 1], m[i:i + 1]) for k, (t, m) in tokens.items()})
            torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(batched[0], model(embedding[:1], {k: (t[1:2], m[1:2]) for k, (t, m) in
                                                                       tokens.items()})[0])

        one_set = {k: (t[1:2], m[1:2]) for k, (t, m) in tokens.items()}
        broadcast = model(embedding, one_set)
        assert broadcast.shape == (3, 32, 16, 16) and model.attention_map.shape == (3, 1, 16, 16)
        for i in range(3):
            torch.testing.assert_close(broadcast[i:i + 1], model(embedding[i:i + 1], one_set), rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="2 prior sets for 3"):
            model(embedding, _random_tokens(2, 16))


def test_padded_tokens_do_not_matter():
    torch.manual_seed(0)
    model = MedSegRPriors(**SMALL).eval()
    _open_gates(model)
    embedding = torch.randn(2, 32, 16, 16)
    tokens = _random_tokens(2, 16)
    changed = {k: (t.clone(), m) for k, (t, m) in tokens.items()}
    for embedded, mask in changed.values():
        embedded[~mask] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(embedding, changed), model(embedding, tokens))
        changed["texture"][0][0, 0] += 1.0  # a real token does matter
        assert not torch.allclose(model(embedding, changed), model(embedding, tokens))
