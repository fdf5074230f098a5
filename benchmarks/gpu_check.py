"""GPU check, for a machine with CUDA (none was lent yet): run as is, under 5 minutes, no downloads.

1. Encoder precision on CUDA against the CPU run: Dice to the reference and agreement (Dice between
   the CUDA and CPU masks) for fp32 and bf16, on CTChest4's right lung and the lung2 tumour, one box.
2. Encoder throughput: slices per second (batch 16) and seconds to encode a 512x512x300 volume.
3. Where two GPUs exist: a 2-process torchrun fine-tune (one epoch) on a small store, its seconds.

    bash benchmarks/gpu_check.sh        # = python benchmarks/gpu_check.py (needs `make cases` first)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from MedSegAdaptLib.evaluation import dice
from MedSegAdaptLib.harness.real_cases import real_targets, reference_prompt
from MedSegAdaptLib.inference import EmbeddingCache, Segmenter
from MedSegAdaptLib.inference.preprocess import preset_for
from MedSegAdaptLib.models import load_backbone


def precision_table() -> None:
    targets = [t for t in real_targets() if t.name in ("CTChest4 right lung", "lung2")]
    cpu = Segmenter(load_backbone(device="cpu", for_inference=True), EmbeddingCache())
    gpu = load_backbone(device="cuda", for_inference=True)
    print("| target | CPU Dice | CUDA fp32 Dice | fp32 vs CPU | CUDA bf16 Dice | bf16 vs CPU |")
    print("|---|---|---|---|---|---|")
    for target in targets:
        box, _ = reference_prompt(target.reference, "box")
        reference_mask = cpu.segment(target.volume, target.structure, box=box, modality=target.modality).mask
        cells = [f"{dice(reference_mask, target.reference):.3f}"]
        for precision in ("fp32", "bf16"):
            mask = Segmenter(gpu, EmbeddingCache(), precision=precision).segment(
                target.volume, target.structure, box=box, modality=target.modality).mask
            cells += [f"{dice(mask, target.reference):.3f}", f"{dice(mask, reference_mask):.3f}"]
        print(f"| {target.name} | " + " | ".join(cells) + " |", flush=True)


def throughput() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_segmentation import synthetic_volume

    volume, _ = synthetic_volume(300, slices=300)
    for precision in ("fp32", "bf16"):
        segmenter = Segmenter(load_backbone(device="cuda", for_inference=True), EmbeddingCache(), batch_size=16,
                              precision=precision)
        encoder = segmenter.encoder_for(volume, preset_for("right lung", "ct"))
        encoder.ensure(list(range(16)))  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        started = time.perf_counter()
        encoder.ensure(list(range(300)))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        print(f"{precision}: {284 / seconds:.1f} slices/s; 512x512x300 encoded in {seconds * 300 / 284:.1f} s "
              f"(peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB)", flush=True)


def two_gpu_finetune() -> None:
    if torch.cuda.device_count() < 2:
        print(f"torchrun fine-tune: skipped ({torch.cuda.device_count()} GPU)")
        return
    from MedSegAdaptLib.io.sample_data import (
        ctchest4_segmentation_path,
        ctchest4_volume_path,
    )
    from MedSegAdaptLib.io.segmentation import read_segmentation
    from MedSegAdaptLib.io.volume import read_volume
    from MedSegAdaptLib.store import FineTuningStore

    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        reference = read_segmentation(ctchest4_segmentation_path()).get("left lung").mask
        with FineTuningStore.init(store) as opened:
            opened.add_image(read_volume(ctchest4_volume_path()), "CTChest4", modality="ct")
            opened.submit_mask("CTChest4", "left lung", reference, "gpu check", annotated_slices={"k": [12, 20, 28]})
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "MedSegAdaptLib.cli", "finetune", str(store), "-o", str(Path(scratch) / "ddp.pt"), "--epochs",
                        "1", "--device", "cuda"], check=True, env=os.environ.copy())
        print(f"torchrun fine-tune on 2 GPUs, 1 epoch: {time.perf_counter() - started:.1f} s")


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on a machine with a GPU")
    print(f"GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
    precision_table()
    throughput()
    two_gpu_finetune()


if __name__ == "__main__":
    main()
