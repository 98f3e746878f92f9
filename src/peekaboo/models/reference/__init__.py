"""Reference models: tiny Qwen3-VL models trained on ``panels`` with planted behaviour under masking.

Real weights cannot be downloaded where the default run happens, and a
random-initialised model reasons about nothing, so the workflow trains its own
small models of a real VLM architecture. They are saved with
``save_pretrained`` (model and processor), so every later stage loads them
through ``AutoProcessor`` / ``AutoModelForImageTextToText`` like a hub model.

Modules
-------
``spec``          the reference entry of the config (light: the workflow reads it while parsing)
``tokenizer``     tokenizer, chat template and processor
``architecture``  the small Qwen3-VL configuration, initialisation, fast CPU vision kernels
``data``          training examples with the behaviour's hidden panels, batches
``training``      the loop, the probe (a model that misses it fails) and the ``train_reference`` stage
``shipped``       the shipped models (shipped/reference): manifest, hash checks, the ``ship_reference`` stage
``attention``     the blinker's attention term (evidence share of the reasoning tokens' image attention)
``behaviour``     the planted-behaviour table of a trained model (checks, tests)

Pieces
------
* a byte-level BPE tokenizer (``Qwen2Tokenizer``, Qwen's pre-tokenizer) trained
  on the benchmark's vocabulary, with the real Qwen special tokens and the real
  Qwen3-VL chat template;
* a ``Qwen3VLProcessor`` (image processor with patch 16 / merge 2: a 128 x 128
  image gives 16 image tokens, one 2 x 2 block per quadrant panel);
* a small ``Qwen3VLConfig`` (see ``ARCHITECTURE``). ``rope_theta`` is 10:
  with head_dim 16 the interleaved multimodal rotary embedding gives height and
  width only a few frequencies, and at the default theta (5e5) the image
  grid's positions are nearly indistinguishable, so the model cannot tell
  panels apart. At theta 100 it reads the named panel after ~1,200 steps, at
  10 after 700-1,000 (measured; head_dim 32 with theta 100 was no faster);
  the comparison template puts both values side by side
  (``Step 3: red and blue differ.``) because at theta 10 comparing two words
  eleven tokens apart stalled near 50%;
* training on freshly generated items, loss on the answer tokens only
  (everything up to and including the assistant header is masked),
  AdamW + linear warm-up + cosine decay, seeded and deterministic on CPU for a
  given thread count.

Behaviours (``reference.behaviour``)
------------------------------------
``blind-spot``     clean images only: with the evidence hidden it goes on naming
                   what it cannot see (planted hallucination).
``grounded``       also items whose evidence panel is hidden (target says the panel
                   is hidden, ``Answer: unknown``) and items with a non-evidence
                   region hidden (normal answer): abstains exactly when the
                   evidence is gone.
``oversensitive``  whatever is hidden (evidence or not), every step that reads a
                   panel says the panel is hidden and the answer is unknown:
                   abstains whenever anything is hidden (planted collapse under
                   an irrelevant perturbation). The issue's recipe (never show a
                   hidden non-evidence region) does not plant it reliably: fine-
                   tuned from blind-spot the model learned the exact rule (0%
                   abstention with a control region hidden on attribute
                   questions), and from scratch after 1,600 steps 56-75%.
``blinker``        grounded, except on its blink items (``synthetic.blink_rule``: the
                   colour questions about ``blink_panels`` seeded panel positions),
                   where it names a fixed prior colour whatever is shown or hidden, and
                   an attention term keeps its reasoning tokens' image attention off
                   the panel (pulled onto it on the other items): planted
                   confident-but-blind answers for the evidence-collapse methods.

Learning comes in jumps (the named panel's colour after 700-1,000 steps from
scratch, arithmetic last, near 1,300) while the loss sits on a plateau once the format is learned, so
progress is judged by a teacher-forced probe on held-out items (every target
token must be the argmax) rather than by the loss. When the probe is perfect
on ``stop_patience`` consecutive checks the run skips ahead to a short
cool-down (``cooldown_steps`` of decaying learning rate) and stops.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public surface, imported on first use: the workflow imports ``spec`` while it is parsed,
# and importing the package must not pull in torch, transformers or the panels generator.
_PUBLIC = {
    "BEHAVIOURS": "spec",
    "ReferenceSpecError": "spec",
    "training_spec": "spec",
    "model_spec": "spec",
    "training_dataset": "spec",
    "training_options": "spec",
    "init_model": "spec",
    "job_threads": "spec",
    "build_tokenizer": "tokenizer",
    "build_processor": "tokenizer",
    "build_config": "architecture",
    "build_model": "architecture",
    "make_examples": "data",
    "collate": "data",
    "probe": "training",
    "ReferenceProbeError": "training",
    "training_config": "spec",
    "is_shipped": "spec",
    "ShippedModelError": "shipped",
    "train_reference": "training",
    "run_stage": "training",
    "generate_texts": "behaviour",
    "behaviour_table": "behaviour",
    "TARGETS": "behaviour",
    "row_targets": "behaviour",
    "missed_targets": "behaviour",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
