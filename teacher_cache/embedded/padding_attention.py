"""Train an SD3 transformer on N identical padding tokens for the price of one (training only).

Without T5, `StableDiffusion3Pipeline.encode_prompt` appends `max_sequence_length` (256 by default)
zero vectors to the CLIP tokens. Text tokens carry no position embedding, so those 256 tokens enter
every joint block identical and stay identical; in attention, N identical keys with identical values
weigh exactly as one key whose logit is raised by log N:

    sum_j exp(q.k_j) v_j  over N copies of (k, v)  =  exp(q.k + log N) v

`RepeatedPaddingJointAttnProcessor(copies)` is diffusers' `JointAttnProcessor2_0` with that one
change: the LAST context token stands for `copies` identical tokens. The embedded flow teacher is
trained with 1 padding token under this processor (the context stream shrinks from 8 + 256 to 8 + 1
tokens, ~4x less compute) and is sampled by the stock pipeline with the stock processor and 256 zero
tokens: the same function (tests/test_flow_teacher.py compares the two).

    transformer.set_attn_processor(RepeatedPaddingJointAttnProcessor(copies=256))
    transformer.set_attn_processor(JointAttnProcessor2_0())    # back to stock before sampling
"""

import math

import torch
import torch.nn.functional as F

SD3_PADDING_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length


class RepeatedPaddingJointAttnProcessor:
    """JointAttnProcessor2_0 (diffusers/models/attention_processor.py) where the last context token
    counts `copies` times in every softmax."""

    def __init__(self, copies: int = SD3_PADDING_TOKENS):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
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
        bias[-1] = self.log_copies  # the padding token's multiplicity, added to its logit for every query
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.expand(query.shape[2], -1))
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * query.shape[-1]).to(query.dtype)

        hidden_states, encoder_hidden_states = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states
