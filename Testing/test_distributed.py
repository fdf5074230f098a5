"""Data-parallel fine-tuning, launched for real by torchrun on the CPU (Gloo): two processes train like one
process over both ranks' batches, keep identical weights, and only rank 0 prints and writes."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import MedSegAdaptLib
from MedSegAdaptLib.inference import EmbeddingCache
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.checkpoint import load_checkpoint
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune
from MedSegAdaptLib.training.distributed import (
    World,
    average_gradients,
    mean,
    process_group,
    shard,
    world,
)

STRUCTURE = "left lung"
SLICES = [17, 23]

# Each rank runs `medsegadapt finetune` and then saves its mask decoder and how many slices it encoded.
RANK_SCRIPT = """
import os, sys
import torch
from MedSegAdaptLib import cli
from MedSegAdaptLib.training import trainer

runs = []
run = trainer.FineTuner.run

def recording_run(self, *args, **kwargs):
    result = run(self, *args, **kwargs)
    runs.append((self, result))
    return result

trainer.FineTuner.run = recording_run
code = cli.main(sys.argv[2:])
tuner, result = runs[0]
decoder = {k: v for k, v in tuner.model.state_dict().items() if k.startswith("mask_decoder.")}
torch.save({"decoder": decoder, "encoded": result.slices_encoded}, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
sys.exit(code)
"""


def test_one_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.full((3,), 2.0)
    with process_group(torch.device("cpu")) as device:
        assert device == torch.device("cpu") and world() == World(0, 1) and world().main
        assert shard([1, 2, 3]) == [1, 2, 3]
        assert mean([0.25, 0.5]) == 0.375
        average_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((3,), 2.0))


def _decoder_distance(first: dict, second: dict) -> float:
    """Euclidean distance between two state dicts (same keys)."""
    return float(sum(((first[k].float() - second[k].float()) ** 2).sum() for k in first) ** 0.5)


def _partial_store(path: Path, ctchest4) -> None:
    """A store with CTChest4 and its left lung annotated on SLICES."""
    volume, reference = ctchest4
    with FineTuningStore.init(path) as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", STRUCTURE, reference.get(STRUCTURE).mask, "tester", annotated_slices={"k": SLICES})


def _torchrun_environment() -> dict[str, str]:
    """This environment with the checkout on PYTHONPATH, for processes torchrun starts."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(MedSegAdaptLib.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_over_both_batches(tmp_path, ctchest4):
    _partial_store(tmp_path / "store", ctchest4)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    # two batches of two slices per epoch: one per rank, whose gradients are averaged into one step
    training = ["--epochs", "1", "--batch-size", "2", "--min-steps-per-epoch", "2", "--lr", "1e-3", "--device", "cpu",
                "--encoder-runtime", "torch", "--cache-dir", str(tmp_path / "cache")]
    env = _torchrun_environment()
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "rank.py"), str(tmp_path), "finetune", str(tmp_path / "store"), "-o", str(tmp_path / "ddp.pt"),
         *training], capture_output=True, text=True, timeout=600, env=env)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-4000:]
    assert launched.stdout.count("wrote ") == 1 and launched.stdout.count("epoch   1") == 1, launched.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == ["ddp.pt", "rank0.pt", "rank1.pt"]

    checkpoint = load_checkpoint(tmp_path / "ddp.pt")
    assert checkpoint["metrics"]["history"][0]["steps"] == 1  # each rank one of the two batches
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [r["encoded"] for r in ranks] == [2, 0]  # rank 0 filled the disk cache, rank 1 read it
    for key, value in ranks[0]["decoder"].items():
        assert torch.equal(value, ranks[1]["decoder"][key]), f"ranks differ in {key}"
        assert torch.equal(value, checkpoint["model"][key]), f"checkpoint differs from the ranks in {key}"

    # one process, one step over both ranks' batches at once (the same seeded order and box jitter)
    with FineTuningStore(tmp_path / "store") as store:
        fine_tune(store, tmp_path / "one.pt", options=FineTuneOptions(epochs=1, batch_size=4, min_steps_per_epoch=1,
                                                                        learning_rate=1e-3),
                  cache=EmbeddingCache(tmp_path / "cache"), encoder_runtime="torch")
    single = {k: v for k, v in load_checkpoint(tmp_path / "one.pt")["model"].items() if k.startswith("mask_decoder.")}
    start = {k: v for k, v in load_backbone().state_dict().items() if k.startswith("mask_decoder.")}
    moved, gap = _decoder_distance(single, start), _decoder_distance(ranks[0]["decoder"], single)
    differ = torch.cat([(ranks[0]["decoder"][k] - single[k]).abs().flatten() for k in single]) > 1e-5  # 1% of a step
    print(f"decoder moved {moved:.4g} from the pretrained one; two processes vs one: {gap:.3g}, "
          f"{int(differ.sum())} of {differ.numel()} weights differ by more than 1e-5")
    # equal up to rounding: Adam's first step is lr * sign(gradient), so the few weights whose gradient is
    # rounding noise (e.g. attention key biases, to which softmax is blind) may step either way
    assert moved > 0 and gap < 0.01 * moved and differ.float().mean() < 1e-3


@pytest.mark.slow
def test_torchrun_adapt_generates_once_then_trains_on_both_ranks(tmp_path, ctchest4):
    _partial_store(tmp_path / "store", ctchest4)
    env = _torchrun_environment()
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "MedSegAdaptLib.cli", "adapt", str(tmp_path / "store"), "--environment", "pediatric", "--count", "1",
         "--threshold", "0", "-o", str(tmp_path / "adapted.pt"), "--epochs", "1", "--batch-size", "2",
         "--min-steps-per-epoch", "2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600, env=env)  # the default encoder runtime: ONNX on CPU
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-4000:]
    # rank 0 alone generated and printed; both ranks trained (one batch each per step)
    assert launched.stdout.count("synthetic labels") == 1 and launched.stdout.count("wrote ") == 1, launched.stdout
    checkpoint = load_checkpoint(tmp_path / "adapted.pt")
    metrics = checkpoint["metrics"]
    real = metrics["train_slices"] - metrics["synthetic_slices"]
    assert real > 0 and metrics["synthetic_slices"] > 0
    batches = max(math.ceil(2 * real / 2), 2)  # an epoch: each real slice and as many synthetic, --batch-size 2
    assert metrics["history"][0]["steps"] == math.ceil(batches / 2)  # each rank half of them
    with FineTuningStore(tmp_path / "store") as store:
        assert len(store.cases()) == 2, "one generated case, not one per rank"
        assert checkpoint["training_set_version"] == store.training_set_version()
        assert {row.kind for row in store.training_view()} == {"correction", "synthetic"}


def test_rank0_alone_uses_the_waiting_ranks_threads_on_cpu_only(monkeypatch):
    from MedSegAdaptLib.training import distributed

    before = torch.get_num_threads()
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 2))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    with distributed.all_cores_while_others_wait(torch.device("cpu")):
        assert torch.get_num_threads() == 2 * before  # capped at the cores: 64 here
    assert torch.get_num_threads() == before
    with distributed.all_cores_while_others_wait(torch.device("cuda", 0)):
        assert torch.get_num_threads() == before  # a GPU rank keeps its threads
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with distributed.all_cores_while_others_wait(torch.device("cpu")):
        assert torch.get_num_threads() == before  # never fewer than it had
