"""The ``batch_requests`` stage: a (model, dataset)'s requests as an OpenAI batch file, for any engine.

One line per mask row of the dataset (``custom_id`` = the mask id), built by
:func:`peekaboo.engines.batch_line`: the chat messages the replay renders
(images as data URIs), the model's generation parameters, a seed per request
and, with ``requests.vllm_fields``, the fields that make vLLM or SGLang return
the prompt's and the generation's token ids and the sampled tokens'
log-probabilities. Run it with ``vllm run-batch -i requests.jsonl -o out.jsonl
--model <the model>``, SGLang or a hosted batch API, and point
``models.<m>.generations`` at the output: it imports as it is, and the replay
checks the prompt ids token for token (docs/traces.md, Engines). Nothing here
loads a model: the engine applies the chat template and caps the generation
at its context.
"""

from __future__ import annotations

import math

from . import schema
from .engines import write_batch_requests
from .generate import shard_requests
from .stage import StageCall


def run_stage(call: StageCall) -> None:
    """The ``batch_requests`` rule (wildcards ``m``, ``d``) into ``output.requests``.

    ``config``: ``model`` and ``dataset`` (the entries), ``requests`` (the
    section) and ``served_model``: the name the engine serves the model under
    (its source, or the reference model's folder), the body's ``model``.
    """
    from . import tables

    cfg = call.config
    name, dataset = call.wildcards["m"], call.wildcards["d"]
    spec = schema.definition("model", cfg["model"], where=f"models.{name}")
    dataset_spec = schema.definition("dataset", cfg["dataset"], where=f"datasets.{dataset}")
    items = tables.read_table(call.path("items_table"))
    masks = tables.read_table(call.path("masks_table"))
    size = int(dataset_spec["shard_size"])
    requests = [r for shard in range(max(1, math.ceil(len(items) / size)))
                for r in shard_requests(items, masks, shard, size, name, dataset, call.results_dir)]
    write_batch_requests(requests, call.output("requests"), model=str(cfg["served_model"]),
                         settings=spec["generation"], thinking=bool(spec["thinking"]),
                         system_prompt=spec["system_prompt"],
                         vllm_fields=bool(schema.section("requests", cfg["requests"])["vllm_fields"]))
