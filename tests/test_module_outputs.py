"""`shared.module_outputs.module_output`, the image-stream rule, on the blocks that return the text stream
first: what it takes from a Flux double and single block is exactly the `hidden_states` the model passes
on to the next module (SD3's JointTransformerBlock: tests/test_capture_hooks.py, through a capture)."""

import torch
from diffusers import FluxTransformer2DModel

from shared.module_outputs import TEXT_STREAM_FIRST, module_output
from tests.student_store_fixture import one_torch_thread  # noqa: F401 (autouse)


def test_every_text_first_block_is_a_diffusers_class():
    import diffusers.models.attention
    import diffusers.models.transformers.transformer_flux as flux

    for name in TEXT_STREAM_FIRST:
        assert hasattr(diffusers.models.attention, name) or hasattr(flux, name), name


def test_flux_blocks_give_the_stream_the_model_passes_on():
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    kept, passed_on = {}, {}
    for name in ("transformer_blocks.0", "single_transformer_blocks.0"):
        model.get_submodule(name).register_forward_hook(
            lambda module, args, out, name=name: kept.__setitem__(name, module_output(module, out))
        )
    model.single_transformer_blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: passed_on.__setitem__("transformer_blocks.0", kwargs["hidden_states"]),
        with_kwargs=True,
    )
    model.norm_out.register_forward_pre_hook(
        lambda m, args: passed_on.__setitem__("single_transformer_blocks.0", args[0])
    )
    image_tokens, text_tokens = 16, 5
    with torch.no_grad():
        model(
            hidden_states=torch.randn(2, image_tokens, 4),
            encoder_hidden_states=torch.randn(2, text_tokens, 16),
            pooled_projections=torch.randn(2, 16),
            timestep=torch.tensor([0.5, 0.5]),
            img_ids=torch.zeros(image_tokens, 3),
            txt_ids=torch.zeros(text_tokens, 3),
        )
    assert sorted(kept) == sorted(passed_on)
    for name, output in kept.items():
        assert output.shape == (2, image_tokens, 16)
        assert torch.equal(output, passed_on[name])
