"""Run an SD3 transformer on N identical padding tokens for the price of one (both phases import it).

Without T5, `StableDiffusion3Pipeline.encode_prompt` appends `max_sequence_length` (256 by default)
zero vectors to the CLIP tokens. Text tokens carry no position embedding and every layer but
attention acts on each token alone, so those tokens enter every joint block identical and stay
identical; in attention, N identical keys with identical values weigh exactly as one key whose logit
is raised by log N:

    sum_j exp(q.k_j) v_j  over N copies of (k, v)  =  exp(q.k + log N) v

`RepeatedPaddingJointAttnProcessor` is diffusers' `JointAttnProcessor2_0` with that one change: the
LAST context token stands for `copies` identical tokens (set at construction, or per call through the
transformer's `joint_attention_kwargs={"padding_copies": n}`); with 1 copy it IS the stock processor.

- Phase one's embedded flow teacher trains with 1 padding token counted 256 times (flow_recipe.py)
  and is sampled by the stock pipeline with the stock processor and 256 zero tokens.
- Phase two's students (student_train/students/student.py) install it with 1 copy (stock) and fold
  a batch's trailing zero tokens per call (`fold_trailing_padding`) when every row ends in >= 2.

    transformer.set_attn_processor(RepeatedPaddingJointAttnProcessor(copies=256))
    transformer.set_attn_processor(JointAttnProcessor2_0())    # back to stock before sampling

    if install_repeated_padding(transformer):                   # every processor joint: installed
        context, copies = fold_trailing_padding(encoder_hidden_states)  # (B, L - n + 1, D), n
        transformer(..., encoder_hidden_states=context, joint_attention_kwargs={"padding_copies": copies})
"""

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import JointAttnProcessor2_0

SD3_PADDING_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length


class RepeatedPaddingJointAttnProcessor(JointAttnProcessor2_0):
    """JointAttnProcessor2_0 (diffusers/models/attention_processor.py) where the last context token
    counts `copies` times in every softmax; `padding_copies` (a per-call kwarg) overrides `copies`."""

    def __init__(self, copies: int = SD3_PADDING_TOKENS):
        super().__init__()
        self.copies = copies

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        padding_copies: int | None = None,
        *args,
        **kwargs,
    ):
        copies = self.copies if padding_copies is None else padding_copies
        if copies == 1:  # nothing repeated: the stock processor, the same arithmetic
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs
            )
        assert encoder_hidden_states is not None, "joint attention only (SD3 without dual attention)"
        batch_size = hidden_states.shape[0]
        image_tokens = hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, H * D) -> (B, H, L, D)
            return x.view(batch_size, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = (heads(p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        context_query, context_key, context_value = (
            heads(p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_added_q is not None:
            context_query, context_key = attn.norm_added_q(context_query), attn.norm_added_k(context_key)
        query = torch.cat([query, context_query], dim=2)  # (B, H, image + context, D)
        key = torch.cat([key, context_key], dim=2)
        value = torch.cat([value, context_value], dim=2)

        bias = torch.zeros(key.shape[2], dtype=query.dtype, device=query.device)
        bias[-1] = math.log(copies)  # the padding token's multiplicity, added to its logit for every query
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.expand(query.shape[2], -1))
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * query.shape[-1]).to(query.dtype)

        hidden_states, encoder_hidden_states = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states


def install_repeated_padding(transformer: torch.nn.Module) -> bool:
    """Give every attention of `transformer` a RepeatedPaddingJointAttnProcessor with 1 copy (stock
    until a call passes `padding_copies`) if all of them are stock joint processors (SD3; not SD3.5's
    dual attention, not a UNet); returns whether it did. `save_pretrained` does not save processors."""
    processors = getattr(transformer, "attn_processors", None)
    if not processors or not all(isinstance(p, JointAttnProcessor2_0) for p in processors.values()):
        return False
    transformer.set_attn_processor(RepeatedPaddingJointAttnProcessor(copies=1))
    return True


def trailing_zero_tokens(encoder_hidden_states: torch.Tensor) -> int:
    """How many tokens at the end of the context (B, L, D) are exactly zero in every row."""
    zero = (encoder_hidden_states == 0).all(dim=-1)  # (B, L)
    return int(zero.flip(1).cumprod(dim=1).sum(dim=1).min())


def fold_trailing_padding(encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(context, copies): the context (B, L, D) whose last n >= 2 tokens are zero in every row, as its
    first L - n + 1 tokens and n copies of the last; else the context itself and 1."""
    padding = trailing_zero_tokens(encoder_hidden_states)
    if padding < 2:
        return encoder_hidden_states, 1
    return encoder_hidden_states[:, : encoder_hidden_states.shape[1] - padding + 1], padding
