"""Watch a phase-two run: loading a text encoder, the VAE or a pipeline fails the test, and every
denoiser loaded and every forward call of `denoiser_class` is recorded.

    loaded, forwards = watch_phase_two(monkeypatch, diffusers.UNet2DConditionModel)
    train(...)
    assert id(loaded[0]) not in forwards        # the teacher's own weights never ran
"""

import diffusers
import transformers

import student_train.training.loop as training_loop


def watch_phase_two(monkeypatch, denoiser_class) -> tuple[list, list[int]]:
    def forbidden(*args, **kwargs):
        raise AssertionError("phase two must not load a text encoder, VAE or pipeline")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(forbidden))
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", classmethod(forbidden))
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(forbidden))
    loaded, forwards = [], []
    load = training_loop.load_denoiser
    monkeypatch.setattr(
        training_loop, "load_denoiser", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1]
    )
    forward = denoiser_class.forward
    monkeypatch.setattr(
        denoiser_class, "forward", lambda self, *a, **k: forwards.append(id(self)) or forward(self, *a, **k)
    )
    return loaded, forwards
