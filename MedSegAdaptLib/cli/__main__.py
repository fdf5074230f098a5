"""`python -m MedSegAdaptLib.cli ...`, as torchrun launches `finetune` and `adapt` on several GPUs."""
import sys

from MedSegAdaptLib.cli import main

sys.exit(main())
