"""A lean inference forward for Llama-family decoders (Llama 2 and 3.x, Qwen2 and 2.5, Qwen3,
Mistral) over a preallocated KV cache.

It runs the model's own weights through the same operations as the transformers forward (so samples
and log-probs are bit-identical on the CPU) without its per-call machinery: no mask building, no
cache objects, no rotary module call per layer. Models it does not cover sample through the
transformers forward.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel

from treerl.errors import warn
from treerl.models.attention import attend_fp32_on_cpu
from treerl.models.lora import underlying

LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "mistral")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""Rotary types whose frequencies are fixed at load (Llama 3.x's scaling among them); `dynamic` and
`longrope` change them with the sequence's length and go through the transformers forward."""
_told: set[str] = set()


def lean_decoder(model: PreTrainedModel) -> LeanDecoder | None:
    """A LeanDecoder over the model's weights (under LoRA adapters, the model's with its adapters),
    or None where the model is not a plain Llama-family decoder; then says once, in one line, that
    this kind of model samples through its (slower) transformers forward."""
    model = underlying(model)
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    plain = (
        config.model_type in LLAMA_FAMILY
        and config.hidden_act == "silu"
        and rope.get("rope_type", "default") in STATIC_ROPE
        and not getattr(config, "use_sliding_window", False)
        and (config.model_type != "mistral" or config.sliding_window is None)
        and all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or [])
    )
    if not plain:
        tell(
            config.model_type,
            f"a {config.model_type} model samples through its transformers forward: treerl's "
            f"lean forward covers {', '.join(LLAMA_FAMILY)} decoders with full attention and "
            f"{', '.join(STATIC_ROPE)} rotary embeddings",
        )
        return None
    if not all(type(p) is torch.nn.Parameter for p in model.parameters()):  # FSDP2's DTensors
        return None
    try:
        decoder = LeanDecoder(model)
    except UnsupportedAdapter:
        decoder = None
    adapted = sum(isinstance(module, BaseTunerLayer) for module in model.modules())
    if decoder is None or adapted != sum(
        linear.lora is not None for layer in decoder.layers for linear in layer.linears()
    ):
        tell(
            "adapter",
            "these adapters sample through the transformers forward: treerl's lean forward "
            "applies one plain, unmerged LoRA adapter on the decoder layers' projections",
        )
        return None
    return decoder


def tell(topic: str, line: str) -> None:
    """Warn once per topic."""
    if topic not in _told:
        _told.add(topic)
        warn(line)


class UnsupportedAdapter(Exception):
    """An adapter the lean forward does not apply (merged, DoRA and other LoRA variants, several at
    once)."""


@dataclass
class Linear:
    """A linear layer's tensors; with a LoRA adapter (peft), its A, B and scale, applied as peft
    applies them: base(x) + B(A(x)) * scale in the adapter's dtype, cast back to the base
    output's."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float] | None = None
    """(A, B, B's bias, scale)."""

    @classmethod
    def of(cls, module: Any) -> Linear:
        """The tensors of an nn.Linear, or of peft's LoRA Linear around one; UnsupportedAdapter for
        other adapters."""
        if not isinstance(module, BaseTunerLayer):
            return cls(module.weight, module.bias)
        if not isinstance(module, LoraLayer):
            raise UnsupportedAdapter
        layer: Any = module  # peft's layers are typed loosely
        base = layer.get_base_layer()
        if layer.disable_adapters:
            return cls(base.weight, base.bias)
        active = [name for name in layer.active_adapters if name in layer.lora_A]
        if (
            layer.merged
            or len(active) != 1
            or active[0] in layer.lora_variant
            or getattr(layer, "cast_input_dtype_enabled", True) is False
        ):
            raise UnsupportedAdapter
        a, b = layer.lora_A[active[0]], layer.lora_B[active[0]]
        return cls(base.weight, base.bias, (a.weight, b.weight, b.bias, layer.scaling[active[0]]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.lora is None:
            return out
        a, b, b_bias, scale = self.lora
        return (out + F.linear(F.linear(x.to(a.dtype), a), b, b_bias) * scale).to(out.dtype)


@dataclass
class LayerWeights:
    """One decoder layer's tensors, looked up once: a module call or attribute lookup costs more
    than a matmul of a small model."""

    input_norm: torch.Tensor
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    q_norm: torch.Tensor | None
    """Qwen3's RMSNorm of each head's queries (and k_norm of its keys), before the rotary
    embedding."""
    k_norm: torch.Tensor | None
    scaling: float
    post_norm: torch.Tensor
    gate: Linear
    up: Linear
    down: Linear

    @classmethod
    def of(cls, layer: Any) -> LayerWeights:
        """The tensors of a transformers decoder layer (Any: transformers is not type-checked
        here)."""
        attn, mlp = layer.self_attn, layer.mlp
        q, k, v, o = (Linear.of(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        gate, up, down = (Linear.of(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        q_norm, k_norm = (
            getattr(getattr(attn, name, None), "weight", None) for name in ("q_norm", "k_norm")
        )
        return cls(
            layer.input_layernorm.weight,
            q,
            k,
            v,
            o,
            q_norm,
            k_norm,
            attn.scaling,
            layer.post_attention_layernorm.weight,
            gate,
            up,
            down,
        )

    def linears(self) -> tuple[Linear, ...]:
        return self.q, self.k, self.v, self.o, self.gate, self.up, self.down


@dataclass
class Plan:
    """Where the rows of one decode step write and read in a paged cache: the pool's slots come in
    blocks of `block` slots, read a block at a time (whole blocks copy faster than scattered slots),
    and `visible` says which of the slots read each row attends to. What depends on the rows' groups
    only (`place`, `in_order`) is computed once, not once per layer; a backend that keeps its groups
    across steps passes them on."""

    write: torch.Tensor | None
    """[B] the slot each row's new token goes to; None (with `contexts`): to the contexts only, as
    nothing will read it out of the pool."""
    own: torch.Tensor
    """[B, Nown] the blocks of each row's own tokens, the new one included, padded."""
    shared: torch.Tensor
    """[G, Nshared] the blocks of each group's shared prefix, padded."""
    group: torch.Tensor
    """[B] each row's group."""
    slot: torch.Tensor
    """[B] each row's place among its group's rows."""
    most_rows: int
    """The most rows of one group."""
    visible: torch.Tensor
    """[B, (Nshared + Nown) x block] which slots of its group's shared blocks and its own blocks
    each row attends to."""
    block: int
    known_place: InitVar[torch.Tensor | None] = None
    """`place`, where the caller knows it already."""
    in_order: bool = False
    """Whether `place` is 0, 1, ..., B - 1 (each group has most_rows rows, one group after the
    other): the rows are then laid out by group as they are, with no copy in and out."""
    place: torch.Tensor = field(init=False)
    """[B] each row's place among the G x most_rows places of the groups' rows:
    group x most_rows + slot."""
    contexts: list[Context] | None = None
    """Each layer's keys and values, kept by the backend; None: `step` reads them out of the
    pool."""
    own_rows: torch.Tensor | None = None
    """[B] with `contexts`: each row's row among the first B rows of the contexts' own keys and
    values; None: row b's is b."""
    own_order: torch.Tensor | None = None
    """[B] with `own_rows`: the row whose own keys and values each of those B rows holds."""
    own_at: torch.Tensor | None = None
    """[B x KV] with `contexts`: where each row's new token goes, head by head, among the
    R x KV x S own slots of a context."""
    own_slot: int | None = None
    """With `own_at`, where every row's new token goes to the same slot s (rows that joined
    together): s, written as one strided copy into the first B rows (16 against 41 us a write of
    `own_at`'s scattered one, 128 rows, the slab out of cache)."""
    hidden: torch.Tensor = field(init=False)
    """[B, 1, 1, (Nshared + Nown) x block] not `visible`: the slots each row's scores mask out."""

    def __post_init__(self, known_place: torch.Tensor | None) -> None:
        self.place = self.group * self.most_rows + self.slot if known_place is None else known_place
        self.hidden = ~self.visible[:, None, None]


@dataclass
class Context:
    """One layer's keys and values that a decode step's rows attend to, in the layout
    `attend_paged` computes on, in the pool's dtype: each group's prefix [KV, G, Wg, D]
    (`Plan.shared` read out of the pool) and the rows' own tokens [R, KV, S, D], row b's own slots
    in row `Plan.own_rows[b]` < B, its first Wo slots those of `Plan.own` (R >= B, S >= Wo): the
    first B rows, sliced to Wo slots, are batches of [Wo, D] matrices that a matmul reads in place
    (rows first: a slice of [KV, R, ...] would be copied, and its matmul rounds differently). A
    backend may keep it across steps: `step` writes each new token into it (at `Plan.own_at`) as
    into the pool."""

    shared_keys: torch.Tensor
    shared_values: torch.Tensor
    own_keys: torch.Tensor
    own_values: torch.Tensor


class KVCache:
    """Keys and values of every layer, [rows, kv heads, capacity, head dim], filled up to `width`
    columns."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], width: int):
        self.layers = layers
        self.width = width

    @classmethod
    def empty(cls, decoder: LeanDecoder, rows: int, capacity: int, like: torch.Tensor) -> KVCache:
        shape = (rows, decoder.kv_heads, capacity, decoder.head_dim)
        return cls([(like.new_zeros(shape), like.new_zeros(shape)) for _ in decoder.layers], 0)


class LeanDecoder:
    def __init__(self, model: PreTrainedModel):
        config, body = model.config, model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed, self.norm, self.head = (
            body.embed_tokens.weight,
            body.norm.weight,
            model.lm_head.weight,
        )
        self.inv_freq = body.rotary_emb.inv_freq
        self.rope_scale = float(getattr(body.rotary_emb, "attention_scaling", 1.0))
        self.layers = [LayerWeights.of(layer) for layer in body.layers]
        self.rotary_table: tuple[torch.Tensor, torch.Tensor] | None = None
        """`rotary` of positions 0, 1, ..., [positions, H, D] each (`keep_rotary`)."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """transformers' RMSNorm, in fp32 (its casts skipped where they change nothing: each is an
        operation)."""
        wide = x if x.dtype == torch.float32 else x.float()
        normed = wide * wide.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        return weight * (normed if normed.dtype == x.dtype else normed.to(x.dtype))

    def keep_rotary(self, positions: int) -> None:
        """Keep `rotary` of positions 0 .. positions - 1 for `step`, which looks its rows' up (the
        same bits: cos and sin are computed element by element), repeated for each query head: on
        the CPU a product with a [B, H, D] operand takes half the time of one broadcast from
        [B, 1, D] (5 against 10 us at [128, 4, 32])."""
        if self.rotary_table is None or len(self.rotary_table[0]) < positions:
            cos, sin = self.rotary(
                torch.arange(positions, device=self.embed.device), self.embed.dtype
            )
            self.rotary_table = (
                cos.expand(-1, self.heads, -1).contiguous(),
                sin.expand(-1, self.heads, -1).contiguous(),
            )

    def rotary(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotary angles, the first half of sin negated (see `rotate`)."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        sin, half = angles.sin() * self.rope_scale, freqs.shape[-1]
        cos = angles.cos() * self.rope_scale
        return cos.to(dtype)[:, None], torch.cat((-sin[..., :half], sin[..., half:]), -1).to(dtype)[
            :, None
        ]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """transformers' x * cos + rotate_half(x) * sin in fewer ops and the same bits:
        rotate_half(x) is x with its halves swapped and the first one negated, and -a * b == a * -b
        exactly."""
        return (x * cos).add_(x.roll(x.shape[-1] // 2, -1) * signed_sin)

    def attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        """Attention of queries [B, H, T, D] over keys and values of the key-value heads, as
        transformers computes it under a mask on the CPU (so the bits are its bits): with several
        query heads per key-value head, one query token is packed as `groups` queries of its head's
        group, more tokens attend to repeated keys. On a GPU the kernel reads the groups itself
        (`enable_gqa`), without a copy."""
        rows, heads, length, dim = q.shape
        groups = heads // self.kv_heads
        if groups == 1 or keys.is_cuda:
            return attend_fp32_on_cpu(
                F.scaled_dot_product_attention,
                q,
                keys,
                values,
                mask,
                scale=scaling,
                enable_gqa=groups > 1,
            )
        if length == 1:
            out = attend_fp32_on_cpu(
                F.scaled_dot_product_attention,
                q.reshape(rows, self.kv_heads, groups, dim),
                keys,
                values,
                mask,
                scale=scaling,
            )
            return out.reshape(rows, heads, 1, dim)
        span = keys.shape[2]
        keys, values = (
            t[:, :, None]
            .expand(rows, self.kv_heads, groups, span, dim)
            .reshape(rows, heads, span, dim)
            for t in (keys, values)
        )
        return attend_fp32_on_cpu(
            F.scaled_dot_product_attention, q, keys, values, mask, scale=scaling
        )

    def qkv(
        self, w: LayerWeights, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [..., H, D], keys and values [..., KV, D] of x [..., hidden], not rotated."""
        h = self.rms_norm(x, w.input_norm)
        q = w.q(h).unflatten(-1, (self.heads, self.head_dim))
        k = w.k(h).unflatten(-1, (self.kv_heads, self.head_dim))
        if w.q_norm is not None and w.k_norm is not None:
            q, k = self.rms_norm(q, w.q_norm), self.rms_norm(k, w.k_norm)
        return q, k, w.v(h).unflatten(-1, (self.kv_heads, self.head_dim))

    def rest_of_layer(
        self, w: LayerWeights, x: torch.Tensor, attended: torch.Tensor
    ) -> torch.Tensor:
        """x after the attention output [..., H x D] and the MLP."""
        # in place only where the result keeps the tensor's dtype: under autocast the linear
        # layers' outputs are bf16 and the residual stream fp32
        x = x + w.o(attended)
        h = self.rms_norm(x, w.post_norm)
        return x + w.down(F.silu(w.gate(h), inplace=True).mul_(w.up(h)))

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits of each row's last position for ids [B, T] at positions [B, T], appended to the
        cache; mask [B, 1, T, width + T] says which cached and new columns each new token attends
        to."""
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(positions, x.dtype)
        rows, length = ids.shape
        start, end = cache.width, cache.width + length
        for w, (keys, values) in zip(self.layers, cache.layers):
            q, k, v = (t.transpose(1, 2) for t in self.qkv(w, x))  # [B, heads, T, D]
            keys[:, :, start:end] = self.rotate(k, cos, sin)
            values[:, :, start:end] = v
            attended = self.attend(
                self.rotate(q, cos, sin), keys[:, :, :end], values[:, :, :end], mask, w.scaling
            )
            x = self.rest_of_layer(w, x, attended.transpose(1, 2).reshape(rows, length, -1))
        cache.width = end
        return F.linear(self.rms_norm(x[:, -1], self.norm), self.head)

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        pool: list[tuple[torch.Tensor, torch.Tensor]],
        plan: Plan,
    ) -> torch.Tensor:
        """Next-token logits after one token per row, tokens [B] at positions [B], over a paged
        cache: `pool` holds each layer's keys and values [KV, slots, D]; the plan says where each
        row writes and what it attends to. Rows are [B, hidden] throughout (no token axis); the
        rotary angles are looked up in the table `keep_rotary` kept, which must reach every
        position."""
        x = F.embedding(tokens, self.embed)
        assert self.rotary_table is not None, "keep_rotary before step"
        cos, sin = (table.index_select(0, positions) for table in self.rotary_table)  # [B, H, D]
        kv_cos, kv_sin = (
            (cos, sin)
            if self.kv_heads == self.heads
            else (
                table[:, : self.kv_heads].index_select(0, positions) for table in self.rotary_table
            )
        )
        contexts: list[Context | None] = [None] * len(self.layers)
        for w, (keys, values), context in zip(self.layers, pool, plan.contexts or contexts):
            q, k, v = self.qkv(w, x)  # [B, heads, D]
            owns = (None, None) if context is None else (context.own_keys, context.own_values)
            for pooled, new, own in zip((keys, values), (self.rotate(k, kv_cos, kv_sin), v), owns):
                new = new if new.dtype == pooled.dtype else new.to(pooled.dtype)  # [B, KV, D]
                if plan.write is not None:
                    pooled.index_copy_(1, plan.write, new.transpose(0, 1))
                if own is None or plan.own_at is None:
                    continue
                if plan.own_slot is None:
                    own.view(-1, self.head_dim).index_copy_(0, plan.own_at, new.flatten(0, 1))
                else:  # row j of the contexts holds row own_order[j]'s
                    own[: len(tokens), :, plan.own_slot] = (
                        new if plan.own_order is None else new.index_select(0, plan.own_order)
                    )
            attended = self.attend_paged(
                self.rotate(q, cos, sin), keys, values, plan, w.scaling, context
            )
            x = self.rest_of_layer(w, x, attended.flatten(1))
        return F.linear(self.rms_norm(x, self.norm), self.head)

    def read(self, pool: torch.Tensor, blocks: torch.Tensor, block: int) -> torch.Tensor:
        """[KV, N, n x block, D]: the slots of blocks [N, n] of a pool [KV, slots, D], in order."""
        by_block = pool.view(self.kv_heads, -1, block * pool.shape[-1])
        return by_block.index_select(1, blocks.flatten()).view(
            self.kv_heads, blocks.shape[0], -1, pool.shape[-1]
        )

    def attend_paged(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        plan: Plan,
        scaling: float,
        context: Context | None = None,
    ) -> torch.Tensor:
        """Attention of one query per row, q [B, H, D], over its group's shared prefix and its own
        tokens.

        Cascade attention: the rows of a group (continuations of one prompt, or of one fork point)
        share their prefix, whose keys and values are read once per group, by all of the group's
        queries together; each row reads its own tokens alone. One softmax runs over both parts, so
        this is exact attention over the row's whole context. Scores, probabilities and the output
        are computed in fp32 (or in q's dtype, if wider) and rounded to q's dtype at the end, as
        fused attention kernels do: a bf16 score between 16 and 32 is rounded by up to 0.06, which
        moves its probability by up to 6%. Under CPU autocast, autocast is off inside
        (as `attend_fp32_on_cpu`). `context`: the layer's keys and values as the backend keeps them
        (`Context`); without it, they are read out of the pool (`read`)."""
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.attend_paged(q.float(), keys, values, plan, scaling, context).to(
                    q.dtype
                )
        rows, heads, dim = q.shape
        kv, groups = self.kv_heads, plan.shared.shape[0]
        per_kv, width, slots = heads // kv, plan.shared.shape[1] * plan.block, plan.most_rows
        dtype = torch.promote_types(q.dtype, torch.float32)
        own_width = plan.own.shape[1] * plan.block
        own_rows, own_order = (None, None) if context is None else (plan.own_rows, plan.own_order)
        if context is None:
            context = Context(
                *(self.read(pool, plan.shared, plan.block) for pool in (keys, values)),
                *(
                    self.read(pool, plan.own, plan.block).transpose(0, 1).contiguous()
                    for pool in (keys, values)
                ),
            )
        shared_keys, shared_values, own_keys, own_values = (
            t if t.dtype == dtype else t.to(dtype)
            for t in (
                context.shared_keys,
                context.shared_values,
                *(
                    own
                    if own.shape[0] == rows and own.shape[2] == own_width
                    else own[:rows, :, :own_width]
                    for own in (context.own_keys, context.own_values)
                ),
            )
        )  # [KV, G, Wg, D] and [B, KV, Wo, D]

        def by_group(per_row: torch.Tensor) -> torch.Tensor:
            """[KV, G, most_rows x g, last] from [B, KV, g, last]: each group's rows together, in
            their slots (zeros in the slots of a group with fewer rows)."""
            if plan.in_order:
                return per_row.transpose(0, 1).reshape(kv, groups, slots * per_kv, -1)
            laid_out = per_row.new_zeros(kv, groups * slots, per_kv, per_row.shape[-1])
            return laid_out.index_copy_(1, plan.place, per_row.transpose(0, 1)).view(
                kv, groups, slots * per_kv, -1
            )

        def by_row(per_group: torch.Tensor) -> torch.Tensor:
            """[B, KV, g, last] from [KV, G, most_rows x g, last]: each row's part (a view where
            `in_order`)."""
            laid_out = per_group.view(kv, groups * slots, per_kv, -1)
            return (laid_out if plan.in_order else laid_out.index_select(1, plan.place)).transpose(
                0, 1
            )

        def with_own(per_row: torch.Tensor) -> torch.Tensor:
            """[B, KV, g, last] in the order of the rows' own keys and values."""
            return per_row if own_order is None else per_row.index_select(0, own_order)

        def own_row(per_own: torch.Tensor) -> torch.Tensor:
            """[B, KV, g, last] from [B, KV, g, last] in that order: in the rows' order."""
            return per_own if own_rows is None else per_own.index_select(0, own_rows)

        # rows first throughout ([B, KV, g, ...]): the scores, the own part's matmuls and the
        # output are contiguous as they come, and the output is a view of [B, H x D]
        by_head = q.view(rows, kv, per_kv, dim)  # [B, KV, g, D]
        by_head = by_head if by_head.dtype == dtype else by_head.to(dtype)
        shared = by_row(by_group(by_head) @ shared_keys.transpose(-1, -2))  # [B, KV, g, Wg]
        own = own_row(with_own(by_head) @ own_keys.transpose(-1, -2))  # [B, KV, g, Wo]
        # scaled after the cat, in place: the same bits as scaling each part, in fewer operations
        scores = torch.cat([shared, own], -1).mul_(scaling).masked_fill_(plan.hidden, float("-inf"))
        probs = scores.softmax(-1)
        out = own_row(with_own(probs[..., width:]) @ own_values).add_(
            by_row(by_group(probs[..., :width]) @ shared_values)
        )  # [B, KV, g, D]; own + shared == shared + own, bit for bit
        out = out.view(rows, heads, dim)
        return out if out.dtype == q.dtype else out.to(q.dtype)
