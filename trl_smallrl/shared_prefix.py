"""A backbone forward that runs a prefix shared by several rows once (GRPO's group of completions of one prompt).

TRL scores a GRPO micro-batch by running the backbone over each row's prompt and completion, so the G completions
of a prompt run the same prompt G times. With SmolLM2-135M on a 2-core CPU the training forward and backward, not
the rollouts, take about 70% of the embedded recipe's step, and the prompt (about 260 tokens) is about half of each
row's tokens. `prefixes_shared` runs each distinct prefix once with a KV cache, repeats that cache for the rows that
share it and runs the rest of every row on it: the hidden states are the ones of the full forward (up to the rounding
of the smaller matmuls; positions are the same, since transformers numbers them from the cache), and gradients
reach the prefix through the repeated cache, summed over its rows as the full forward would.
"""

from __future__ import annotations

import contextlib

CALLER_STATE = ("cache", "past_key_values", "inputs_embeds", "position_ids", "cache_position")  # a call with any
# of these is not a plain scoring call: it runs as the backbone's own
MIN_SAVING = 0.1  # the share of the row-positions a shared prefix must save before the split forward pays


def _prefix_plan(input_ids, attention_mask):
    """The prefix length, the rows that run it (one per distinct prefix) and each row's index among them, or None
    when sharing saves less than `MIN_SAVING` of the positions. Rows need not be adjacent: TRL shuffles a
    generation batch before it cuts it into micro-batches."""
    import torch

    rows, width = input_ids.shape
    if rows < 2:
        return None
    differs = (input_ids[:, None] != input_ids[None]) | (attention_mask[:, None] != attention_mask[None])
    common = torch.where(differs.any(-1), differs.int().argmax(-1), width)  # rows x rows: common prefix lengths
    earlier = torch.ones(rows, rows, dtype=torch.bool).tril(-1)
    longest = torch.where(earlier, common, -1).max(-1).values.tolist()  # with any earlier row; -1 for the first
    best_length, best_saved = 0, 0
    for length in set(longest) - {-1, 0}:
        saved = length * sum(1 for c in longest if c >= length)  # each row whose prefix ran before saves `length`
        if saved > best_saved:
            best_length, best_saved = length, saved
    if best_saved < MIN_SAVING * rows * width:
        return None
    firsts = torch.tensor([c < best_length for c in longest])
    owner = (common[:, firsts] >= best_length).int().argmax(-1)  # the first row, among `firsts`, sharing the prefix
    return min(best_length, width - 1), firsts, owner  # at least one position left for the rest of each row


@contextlib.contextmanager
def prefixes_shared(backbone):
    """Within the block, calls of `backbone` (a transformers decoder stack such as `LlamaModel`) without a cache,
    as TRL's scoring makes them, run shared prefixes once; every other call is the backbone's own."""
    original = backbone.forward
    patched_before = "forward" in vars(backbone)  # an instance's own forward (a wrapper) goes back as it was

    def forward(input_ids=None, attention_mask=None, **kwargs):
        plan = None
        plain = not any(kwargs.get(k) is not None for k in CALLER_STATE)
        if plain and input_ids is not None and attention_mask is not None and attention_mask.dim() == 2:
            checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())
            if not (backbone.training and checkpointing):  # transformers turns the cache off then
                plan = _prefix_plan(input_ids, attention_mask)
        if plan is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return _split_forward(original, backbone.config, input_ids, attention_mask, *plan, kwargs)

    backbone.forward = forward
    try:
        yield
    finally:
        if patched_before:
            backbone.forward = original
        else:
            del backbone.forward  # back to the class's forward


def _split_forward(forward, config, input_ids, attention_mask, length, firsts, owner, kwargs):
    import torch
    from transformers import DynamicCache

    from trl_smallrl.decoding import cache_keyword

    keyword = cache_keyword(forward)
    kwargs = {**kwargs, "use_cache": True}
    prefix_cache, cache = DynamicCache(config=config), DynamicCache(config=config)
    head = forward(
        input_ids=input_ids[firsts, :length],
        attention_mask=attention_mask[firsts, :length],
        **{keyword: prefix_cache},
        **kwargs,
    )
    for index, layer in enumerate(prefix_cache.layers):
        cache.update(layer.keys[owner], layer.values[owner], index)
    rest = forward(input_ids=input_ids[:, length:], attention_mask=attention_mask, **{keyword: cache}, **kwargs)
    rest.last_hidden_state = torch.cat([head.last_hidden_state[owner], rest.last_hidden_state], dim=1)
    return rest
