"""``medsegadapt environments`` and ``medsegadapt adapt STORE --environment NAME --count N -o CKPT``.

As elsewhere in the command line, the library is imported when the command runs, so that
``medsegadapt --help`` stays fast; bad input raises InputError (``error: ...``, exit status 2).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from MedSegAdaptLib.cli.finetune import add_training_options, fine_tune_from_args
from MedSegAdaptLib.cli.model_options import add_model_options, pretrained_and_adapted
from MedSegAdaptLib.core.errors import InputError

__all__ = ["add_adapt_parsers", "parse_settings", "run_adapt", "run_environments"]


def add_adapt_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the `environments` and `adapt` commands to the main command's subparsers."""
    listing = subparsers.add_parser("environments", help="list MedSeg-Adapt's imaging environments",
                                    description="List the imaging environments `adapt` simulates, with their "
                                                "parameters and defaults (change them with `adapt --set`).")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(func=run_environments)

    parser = subparsers.add_parser(
        "adapt", help="adapt the model to an imaging environment with self-validated synthetic data",
        description="Simulate COUNT samples of an imaging environment from the store's corrected cases, write "
                    "clinical queries for them, label them (by default with the simulator's exact labels on the "
                    "slices the corrections became; with --labels exact+pseudo or pseudo also with ensemble "
                    "pseudo-masks, self-validated by knowledge-base rules and ensemble agreement, the failing ones "
                    "queued for expert review: `store review STORE list`), add them to the store as synthetic "
                    "labels and fine-tune on the training view, real corrections weighted as --synthetic-share "
                    "says. Samples already generated with the same parameters are reused from the store.")
    parser.add_argument("store", type=Path, help="fine-tuning store folder with corrections of real cases")
    parser.add_argument("--environment", required=True,
                        help="low-dose-ct, high-res-ct, varying-field-mri, pediatric or pathology "
                             "(`medsegadapt environments` lists their parameters)")
    parser.add_argument("--count", type=int, required=True, help="samples to generate")
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint file to write (.pt)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="environment parameter, VALUE as JSON (e.g. dose_fraction=0.1, radius_mm=[3,8]); "
                             "repeatable")
    parser.add_argument("--structures", default=None, help="';'-separated structures to adapt (default: all "
                                                           "corrected ones)")
    parser.add_argument("--threshold", type=float, default=0.8,
                        help="self-validation score a pseudo-mask needs to train without review (default: %(default)s)")
    parser.add_argument("--no-self-validation", action="store_true",
                        help="accept every pseudo-mask without checking it (an ablation)")
    parser.add_argument("--labels", default="exact", choices=("exact", "exact+pseudo", "pseudo"),
                        help="what the samples train on: the simulator's exact labels where the corrections make them "
                             "known (exact), those plus self-validated ensemble pseudo-masks elsewhere (exact+pseudo), "
                             "or pseudo-masks alone (pseudo, the earlier method) (default: %(default)s)")
    parser.add_argument("--generator", default=None, metavar="MODULE:FUNCTION",
                        help="optional image model refining each simulated image: FUNCTION(sample, rng) returns a new "
                             "(I, J, K) image on the same grid (e.g. a local diffusion model used image-to-image)")
    parser.add_argument("--llm", default=None, metavar="MODULE:FUNCTION",
                        help="optional local language model rewriting the template queries: FUNCTION(prompt) -> text")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep slice embeddings on disk here")
    parser.add_argument("--json", action="store_true", help="print the generated labels as JSON")
    add_model_options(parser)
    add_training_options(parser)
    parser.set_defaults(func=run_adapt)


def parse_settings(settings: list[str]) -> dict:
    """['dose_fraction=0.1', 'radius_mm=[3,8]'] -> {'dose_fraction': 0.1, 'radius_mm': (3, 8)}."""
    values = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {setting!r}: expected NAME=VALUE, e.g. dose_fraction=0.1")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        values[name.strip()] = tuple(value) if isinstance(value, list) else value
    return values


def run_environments(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt environments`."""
    from MedSegAdaptLib.environments.simulators import environment_catalog

    listing = environment_catalog()
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    for entry in listing:
        print(f"{entry['name']}: {entry['description']}")
        for key, value in entry["parameters"].items():
            print(f"    {key} = {value}")
    return 0


def run_adapt(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt adapt`. Under torchrun, rank 0 generates the samples while the other ranks
    wait, then all ranks fine-tune data-parallel (as `finetune` does)."""
    from MedSegAdaptLib.environments.pipeline import load_hook
    from MedSegAdaptLib.environments.simulators import environment
    from MedSegAdaptLib.models.device import resolve_device
    from MedSegAdaptLib.store import FineTuningStore
    from MedSegAdaptLib.training.distributed import (
        all_cores_while_others_wait,
        process_group,
        rank0_first,
        world,
    )

    chosen = environment(args.environment, **parse_settings(args.set))
    generator = None if args.generator is None else load_hook(args.generator, "--generator")
    llm = None if args.llm is None else load_hook(args.llm, "--llm")
    structures = None if args.structures is None else [s.strip() for s in args.structures.split(";") if s.strip()]
    with process_group(resolve_device(args.device)) as device, FineTuningStore(args.store) as store:
        with rank0_first():
            if world().main:
                with all_cores_while_others_wait(device):
                    _generate_and_report(args, store, chosen, structures, generator, llm)
        fine_tune_from_args(args, store, device)
    return 0


def _generate_and_report(args: argparse.Namespace, store, chosen, structures, generator, llm) -> None:
    """Generate `adapt`'s samples into `store` and print what self-validation decided."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.environments.pipeline import generate_samples, summarize

    members = []
    if args.labels != "exact":  # only pseudo-masks need the models
        pretrained, adapted = pretrained_and_adapted(args, args.cache_dir)
        members = [pretrained] if adapted is None else [adapted, pretrained]
    progress = TerminalProgress()
    try:
        generated = generate_samples(store, chosen, args.count, members, seed=args.seed, threshold=args.threshold,
                                     self_validation=not args.no_self_validation, structures=structures,
                                     generator=generator, llm=llm, labels=args.labels,
                                     progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps([label.to_dict() for label in generated], indent=2))
    reused = sum(label.cached for label in generated)
    if reused:
        print(f"{reused} synthetic labels reused from earlier runs with the same parameters")
    for name, counts in summarize(generated).items():
        print(f"{name}: {counts['generated']} synthetic labels ({counts['exact']} exact from the simulator), "
              f"{counts['accepted']} accepted, {counts['queued']} queued for review")
    queued = sum(not label.accepted for label in generated)
    if queued:
        print(f"{queued} labels wait for an expert: medsegadapt store review {args.store} list")
