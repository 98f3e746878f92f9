"""Teacher-forced replay against decode-time capture (the path it replaces), on every tiny family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _fixtures_models import full_length, load, tiny_models  # noqa: F401
from _fixtures_models import sample_images  # noqa: F401
from _fixtures_models import sample_requests as requests
from peekaboo import capture, replay
from peekaboo.generate import GenerationSettings, TraceGenerator
from peekaboo.models.tiny import FAMILIES

N_NEW = 6


def replay_of(gen: TraceGenerator, reqs, generated, chunk_mb=1024.0, map_layers="all", keep_heads=True):
    """Replay ``generated`` (token ids per request) with the generator's prompts and batching."""
    prepared = [gen.prepare(r) for r in reqs]
    batch, offsets = gen.collate(prepared)
    images = capture.BatchImages.from_rows([p.images.positions + off for p, off in zip(prepared, offsets)],
                                           [p.weights for p in prepared])
    rb = replay.replay_inputs(batch, generated, gen.pad_id, images)
    return replay.Replayer(gen.model, map_layers, keep_heads, chunk_mb=chunk_mb).run(rb)


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("family", FAMILIES)
def test_replay_equals_decode_time_capture(family, batched, tiny_models, sample_images):  # noqa: F811
    """Every recorded array of decode-time capture (the Recorder) against the replay of the same tokens,
    in float32: batched rows are left-padded prompts; in the batched case the second row's chain is cut
    by two tokens for the replay, so its rows are padded on the right."""
    torch.set_num_threads(1)
    model, processor = load(tiny_models[family])
    full_length(model, processor)
    reqs = requests(sample_images, batched)
    gen = TraceGenerator(model, processor, family, GenerationSettings(max_new_tokens=N_NEW), map_layers="all",
                         keep_heads=True)
    decoded = gen.generate(reqs)
    lengths = [N_NEW] + [N_NEW - 2] * (len(reqs) - 1)
    generated = [d.token_ids[:n].tolist() for d, n in zip(decoded, lengths)]
    # several chunks of rows for attention and for the LM head
    replayed = replay_of(gen, reqs, generated, chunk_mb=0.002)
    worst = 0.0
    for b, (d, n) in enumerate(zip(decoded, lengths)):
        P, R = len(d.patch_box), d.n_regions
        pairs = {"image_attn": (replayed["image_attn"][b, :n, :, :P], d.image_attn[:n]),
                 "image_attn_heads": (replayed["image_attn_heads"][b, :n, :, :, :P], d.image_attn_heads[:n]),
                 "image_mass": (replayed["image_mass"][b, :n], d.image_mass[:n]),
                 "region_mass": (replayed["region_mass"][b, :n, :, :R], d.region_mass[:n]),
                 "entropy": (replayed["entropy"][b, :n], d.entropy[:n]),
                 "logprob": (replayed["logprob"][b, :n], d.logprob[:n])}
        for name, (r, c) in pairs.items():
            assert r.shape == c.shape, name
            np.testing.assert_allclose(r, c, atol=1e-4, rtol=1e-4, err_msg=name)
            worst = max(worst, float(np.abs(r - c).max()))
    print(f"{family} {'batched' if batched else 'unbatched'}: largest difference {worst:.2e}")
