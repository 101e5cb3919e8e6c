"""`sample_tokens`: sampling from a Llama-family model on a CPU at what the CPU allows.

transformers' `generate` runs at about a tenth of what a CPU allows for a small model (measured on a 2-core AMD
EPYC: 51 tokens/s at batch 8). `sample_tokens` samples from the distribution `generate` samples from (greedy
decoding gives the same tokens) and changes only where the time goes: identical prompts (a GRPO group, or eval's k
samples) prefilled once and their cache copied, decode steps as a few tensor operations a layer, each projection
in the matmul layout MKL runs fastest for few rows (`_Decoder`), finished rows dropped from the batch, the nucleus
found among the likeliest tokens instead of a sort of the vocabulary, and the LM head through oneDNN, which runs the
576 x 49152 projection of SmolLM2 2.5x faster than MKL on such CPUs. Evaluation and teacher traces reach it
through `generation.sample`, GRPO's CPU rollouts through `grpo_rollouts`.
"""

from __future__ import annotations

from collections.abc import Sequence


def sample_tokens(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    compute_dtype=None,
) -> list[list[int]]:
    """Sampled completion ids for each prompt, in order, each ending with its end-of-sequence token (or cut at
    `max_new_tokens`). Identical prompts are prefilled once. `temperature` 0 is greedy. Uses torch's global RNG.

    `compute_dtype` (None: the weights' dtype) is the precision of the matmuls, the attention and the KV cache, the
    residual stream and the norms staying in the weights' dtype: `torch.bfloat16` over float32 weights computes as
    bf16 autocast does, so a trainer that trains under bf16 autocast samples from the distribution its loss scores.
    On a CPU with native bf16 (a 2-core AMD EPYC with AVX512-BF16) that decodes the embedded model 1.4-1.6x faster.

    `model` is a causal LM of transformers of the Llama family (Llama, SmolLM, Qwen2, Qwen3); call
    `supports_sample_tokens(model)` first. The prompts are prefilled by the model itself; each decode step runs
    through `_Decoder`.
    """
    import torch
    from transformers import DynamicCache

    unique: dict[tuple[int, ...], int] = {}
    row_prompt = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
    width = max(len(p) for p in unique)
    length = width + max_new_tokens
    ids = torch.full((len(unique), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(unique), length), dtype=torch.bool)
    for prompt, row in unique.items():
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) : width] = True
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    backbone = getattr(model, model.base_model_prefix)
    eos = torch.tensor(sorted(set(eos_ids)))
    cache = DynamicCache(config=model.config)
    weights_dtype = model.get_output_embeddings().weight.dtype
    compute_dtype = compute_dtype or weights_dtype
    lower = compute_dtype != weights_dtype
    head = _lm_head(model, compute_dtype)
    with torch.inference_mode():
        with torch.autocast(model.device.type, dtype=compute_dtype, enabled=lower):  # the prefill, as autocast runs it
            hidden = backbone(
                input_ids=ids,
                attention_mask=mask[:, :width].long(),
                position_ids=positions,
                use_cache=True,
                **{cache_keyword(backbone.forward): cache},
            ).last_hidden_state[:, -1]
        expand = torch.tensor(row_prompt)  # each completion gets its own copy of its prompt's cache
        decoder = _Decoder(backbone, cache, expand, length, compute_dtype)
        hidden, mask, position = hidden[expand], mask[expand], positions[expand, -1]
        alive = torch.arange(len(prompts))  # the original row of each batch row
        finished = torch.zeros(len(prompts), dtype=torch.bool)
        completions: list[list[int]] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            tokens = _sample(head(hidden).float(), temperature, top_p, top_k)
            for row, token, done in zip(alive.tolist(), tokens.tolist(), finished[alive].tolist()):
                if not done:
                    completions[row].append(token)
            finished[alive[torch.isin(tokens, eos)]] = True
            active = ~finished[alive]
            if step == max_new_tokens - 1 or not bool(active.any()):
                break
            if int((~active).sum()) * 4 >= len(alive):  # a quarter of the batch is done: dropping it pays off
                keep = active.nonzero()[:, 0]
                decoder.keep(keep)
                alive, mask, position, tokens = alive[keep], mask[keep], position[keep], tokens[keep]
            mask[:, width + step] = True
            position = position + 1
            hidden = decoder.step(tokens, position, mask[:, : width + step + 1])
    return completions


class _Decoder:
    """One decode step of a Llama-family backbone as plain tensor operations, on a KV cache of its own.

    Measured on a 2-core AMD EPYC (SmolLM2-135M, 8 rows), the matmuls take about 70% of a decode step through
    transformers' layers, and MKL runs the `weight @ x.T` layout of such skinny matmuls about twice as fast as the
    `x @ weight.T` that `nn.Linear` asks for (`_project`); owning the step is what lets it choose. The query, key
    and value projections are one matmul, and so are the gate and up projections; rotary is applied to queries
    and keys at once; the new key and value are written into a preallocated cache, and attention reads only its
    filled part, grouped queries against their shared key/value heads (as transformers' SDPA path does for one
    query token). Norms, the activation and rotary's cos/sin are the model's own modules, so the arithmetic is the
    model's but for the rounding of the matmuls: greedy decoding gives `generate`'s tokens (tests check it in each
    family). The fused weights are built per call, after a rollout has added its LoRA update into the base.
    """

    def __init__(self, backbone, prefill_cache, expand, length: int, dtype):
        config = backbone.config
        self.backbone = backbone
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.layers = [_FusedLayer(layer, dtype) for layer in backbone.layers]
        self.keys, self.values = [], []
        for layer in prefill_cache.layers:
            rows, width = len(expand), layer.keys.shape[2]
            for store, filled in ((self.keys, layer.keys), (self.values, layer.values)):
                cache = filled.new_zeros((rows, filled.shape[1], length, filled.shape[3]), dtype=dtype)
                cache[:, :, :width] = filled[expand]
                store.append(cache)

    def keep(self, rows) -> None:
        """Drop the batch rows not in `rows` (finished ones) from the cache."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]

    def step(self, tokens, position, mask):
        """The last hidden state (after the final norm) of each row for its next token `tokens`, at `position`,
        attending to the cache where `mask` (rows x positions so far, this one included) is True."""
        import torch
        import torch.nn.functional as F

        rows, slot = tokens.size(0), mask.size(1) - 1
        x = self.backbone.embed_tokens(tokens)
        cos, sin = self.backbone.rotary_emb(x, position[:, None])  # (rows, 1, head_dim): broadcast over heads
        attend = mask[:, None, None, :]
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            q, k, v = _project(layer.input_norm(x), layer.qkv, layer.qkv_bias).split(layer.qkv_sizes, -1)
            q, k, v = (t.view(rows, -1, layer.head_dim) for t in (q, k, v))
            if layer.q_norm is not None:  # Qwen3
                q, k = layer.q_norm(q), layer.k_norm(k)
            qk = _rotate(torch.cat((q, k), dim=1), cos, sin)
            q, k = qk[:, : self.heads], qk[:, self.heads :]
            keys[:, :, slot], values[:, :, slot] = k, v
            grouped = q.to(keys.dtype).reshape(rows, self.kv_heads, self.heads // self.kv_heads, layer.head_dim)
            attended = F.scaled_dot_product_attention(
                grouped, keys[:, :, : slot + 1], values[:, :, : slot + 1], attn_mask=attend, scale=layer.scaling
            )
            x = x + _project(attended.reshape(rows, -1), layer.o, layer.o_bias)
            gate, up = _project(layer.post_norm(x), layer.gate_up, layer.gate_up_bias).chunk(2, -1)
            x = x + _project(layer.act(gate) * up, layer.down, layer.down_bias)
        return self.backbone.norm(x)


def _project(x, weight, bias):
    """`x @ weight.T + bias` for the few rows of a decode step, computed as `weight @ x.T`: MKL runs that layout
    of a skinny matmul about twice as fast (SmolLM2's 3072 x 576 gate/up projection at 8 rows on a 2-core AMD
    EPYC: 0.69 ms against 1.57 ms for `F.linear`)."""
    import torch

    x = x.to(weight.dtype)
    out = torch.mm(weight, x.t()) if bias is None else torch.addmm(bias[:, None], weight, x.t())
    return out.t().contiguous()


def _rotate(x, cos, sin):
    """Rotary position embedding, as transformers' `apply_rotary_pos_emb` computes it."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _FusedLayer:
    """A decoder layer's weights as `_Decoder` uses them: q/k/v and gate/up concatenated (PEFT's wrappers
    unwrapped to their base layers, into which a rollout has added the LoRA update), in the decode's `dtype`."""

    def __init__(self, layer, dtype):
        import torch

        attn, mlp = layer.self_attn, layer.mlp
        q, k, v, o = (_base(getattr(attn, name)) for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
        gate, up, down = (_base(getattr(mlp, name)) for name in ("gate_proj", "up_proj", "down_proj"))
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.qkv = torch.cat([q.weight, k.weight, v.weight]).to(dtype)
        self.qkv_bias = None if q.bias is None else torch.cat([q.bias, k.bias, v.bias]).to(dtype)
        self.qkv_sizes = [q.out_features, k.out_features, v.out_features]
        self.o, self.o_bias = o.weight.to(dtype), None if o.bias is None else o.bias.to(dtype)
        self.gate_up = torch.cat([gate.weight, up.weight]).to(dtype)
        self.gate_up_bias = None if gate.bias is None else torch.cat([gate.bias, up.bias]).to(dtype)
        self.down, self.down_bias = down.weight.to(dtype), None if down.bias is None else down.bias.to(dtype)
        self.input_norm, self.post_norm, self.act = layer.input_layernorm, layer.post_attention_layernorm, mlp.act_fn
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)


def _base(linear):
    """The plain `nn.Linear` under a PEFT wrapper (or the layer itself). Its weights alone are run, so an adapter
    still active beside them is refused: its update must be in them (`adapters.adapter_added_to_base`)."""
    if not hasattr(linear, "get_base_layer"):
        return linear
    if linear.active_adapters and not (linear.disable_adapters or linear.merged):
        raise ValueError("sample_tokens runs base weights only: add the LoRA update into them first")
    return linear.get_base_layer()


def cache_keyword(forward) -> str:
    """The name of the KV-cache argument of a transformers backbone's `forward`: `cache` from transformers 5.24 on
    (where `past_key_values` still works but warns), `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


NUCLEUS_CANDIDATES = 256  # the most likely tokens searched first for the top-p nucleus; more only when they fall short


def _sample(logits, temperature: float, top_p: float, top_k: int):
    """One token per row from transformers' distribution: temperature, then top-k, then top-p (nucleus).

    It draws differently from `generate` (one uniform number a row, inverted through the cumulative probabilities)
    and finds the nucleus among the most likely few hundred tokens rather than sorting the whole vocabulary: a sort
    of 49152 logits and `multinomial`'s exponential draw over all of them took a third of a CPU decode step.
    """
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    vocab = logits.size(-1)
    order = None
    if top_k and top_k < vocab:
        values, order = torch.topk(logits, top_k, dim=-1)
        probs = values.softmax(-1)
    elif top_p < 1.0:
        full = logits.softmax(-1)
        candidates = min(NUCLEUS_CANDIDATES, vocab)
        while True:
            probs, order = torch.topk(full, candidates, dim=-1)
            if candidates == vocab or bool((probs.sum(-1) >= top_p).all()):
                break
            candidates = min(vocab, candidates * 8)
    else:
        probs = logits.softmax(-1)
    if top_p < 1.0:  # descending order: keep a token while the more likely ones hold less than top_p
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cumulative = probs.cumsum(-1, dtype=torch.float64)
    draw = torch.rand(probs.size(0), 1, dtype=torch.float64, device=probs.device) * cumulative[:, -1:]
    pick = torch.searchsorted(cumulative, draw, right=True).clamp(max=probs.size(-1) - 1)
    return (pick if order is None else order.gather(-1, pick))[:, 0]


def _lm_head(model, dtype):
    """The output projection in `dtype`, through oneDNN on a CPU that has it (a one-time copy of the weight per
    call)."""
    import torch

    head = model.get_output_embeddings()
    from trl_smallrl.precision import cpu_info

    # oneDNN's bf16 linear needs AVX512 (BW, VL, DQ) or AVX-NE-CONVERT and raises elsewhere ("mkldnn_linear: bf16
    # path needs the cpu support ..."), and its fp16 one AMX-FP16: a CPU without them, where `cpu_precision: bf16`
    # or `eval_dtype` still asks for half precision, takes torch's own (emulated) matmul.
    native = {torch.float32: True, torch.bfloat16: cpu_info().native_bf16, torch.float16: cpu_info().amx_fp16}
    onednn = torch.backends.mkldnn.is_available() and native.get(dtype, False)
    if head.weight.device.type != "cpu" or not onednn:
        weight, bias = head.weight.to(dtype), None if head.bias is None else head.bias.to(dtype)  # cast once a call
        return lambda hidden: torch.nn.functional.linear(hidden.to(dtype), weight, bias)
    import torch.utils.mkldnn

    linear = torch.nn.utils.skip_init(torch.nn.Linear, head.in_features, head.out_features, bias=head.bias is not None)
    linear.weight = torch.nn.Parameter(head.weight.detach().to(torch.float32), requires_grad=False)
    if head.bias is not None:
        linear.bias = torch.nn.Parameter(head.bias.detach().to(torch.float32), requires_grad=False)
    fast = torch.utils.mkldnn.to_mkldnn(linear, dtype)
    return lambda hidden: fast(hidden.to(dtype))


DECODER_FAMILIES = ("llama", "qwen2", "qwen3")  # the decoder layouts `_Decoder` runs


def supports_sample_tokens(model) -> bool:
    """Whether `sample_tokens` reproduces `generate` for this model: a text causal LM of a family `_Decoder` runs
    (Llama, SmolLM, Qwen2, Qwen3) whose logits are the plain output projection and whose attention is global."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return (
        config is model.config
        and config.model_type in DECODER_FAMILIES
        and hasattr(model, model.base_model_prefix)
        and model.get_output_embeddings() is not None
    )
