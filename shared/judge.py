"""The judge: a small CNN that reads (digit, fg colour, bg colour) off a coloured-digit image.

It measures distillation quality on the embedded teacher's task:

    from shared.judge import load_judge, frechet_distance
    judge = load_judge()                          # committed weights in shared/judge_weights/
    judge.adherence(images, prompts)              # fraction whose digit AND both colours match the prompt
    judge.fd_to_real(images)                      # Frechet distance to held-out real digits, judge features
    frechet_distance(judge.features(a), judge.features(b))

Images are numpy arrays or tensors [N, H, W, 3], either uint8 in [0, 255] (what
`pipe(..., output_type="np").images * 255` rounds to) or float in [0, 1] (the pipeline's output as is).
Every image is resized (bilinear, antialiased) to 16x16 first: the digits come from 8x8 scans, so
nothing is lost and the judge stays cheap on CPU. Train it with
`python -m teacher_cache.embedded.train_judge`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from shared.digits import COLOURS, make_images, parse_prompt
from shared.errors import DistillCacheError

JUDGE_DIR = Path(__file__).resolve().parent / "judge_weights"
WEIGHTS_NAME, CONFIG_NAME = "judge.safetensors", "judge_config.json"


@dataclass(frozen=True)
class JudgeConfig:
    input_size: int = 16
    channels: tuple[int, ...] = (32, 64)  # one conv pair + 2x2 max-pool per level: 16 -> 8 -> 4
    feature_dim: int = 128


class JudgeNet(nn.Module):
    """images [N, 3, 16, 16] in [-1, 1] -> features [N, D] and logits for digit [N, 10], fg [N, 8], bg [N, 8]."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        layers, previous = [], 3
        for width in config.channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            layers += [
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = width
        side = config.input_size // 2 ** len(config.channels)
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(previous * side * side, config.feature_dim), nn.ReLU())
        self.digit_head = nn.Linear(config.feature_dim, 10)
        self.fg_head = nn.Linear(config.feature_dim, len(COLOURS))
        self.bg_head = nn.Linear(config.feature_dim, len(COLOURS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.embed(self.trunk(images))  # [N, D]
        return features, self.digit_head(features), self.fg_head(features), self.bg_head(features)


def to_judge_input(images, size: int = JudgeConfig.input_size) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images [N, H, W, 3] (numpy or torch) -> float [N, 3, size, size] in [-1, 1]."""
    tensor = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise DistillCacheError(
            f"the judge takes images shaped [N, H, W, 3], got {tuple(tensor.shape)}; "
            "pass pipe(..., output_type='np').images"
        )
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.is_floating_point():
        tensor = tensor.float().clamp(0.0, 1.0)
    else:
        raise DistillCacheError(f"the judge takes uint8 or float images, got {tensor.dtype}")
    tensor = tensor.permute(0, 3, 1, 2)  # [N, 3, H, W] in [0, 1]
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return tensor * 2.0 - 1.0


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (as FID does).

    tr(sqrtm(C_a C_b)) is taken as the sum of square roots of the eigenvalues of C_a C_b (real and
    non-negative for covariance matrices), which stays finite when a covariance is singular.
    """
    if len(features_a) < 2 or len(features_b) < 2:
        raise DistillCacheError("a Frechet distance needs at least 2 images on each side")
    features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    trace_sqrt_product = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0.0)).sum()
    return float(
        ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt_product
    )


class Judge:
    """The trained JudgeNet behind a numpy interface; every method takes images as `to_judge_input` does."""

    def __init__(self, net: JudgeNet, config: JudgeConfig, device: str = "cpu", batch_size: int = 512):
        self.net = net.to(device).eval()
        self.config = config
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def _run(self, images) -> tuple[np.ndarray, ...]:
        inputs = to_judge_input(images, self.config.input_size)
        outputs = [
            self.net(inputs[s : s + self.batch_size].to(self.device))
            for s in range(0, len(inputs), self.batch_size)
        ]
        features, digit, fg, bg = (torch.cat([o[i] for o in outputs]).cpu() for i in range(4))
        return features.numpy(), digit.argmax(1).numpy(), fg.argmax(1).numpy(), bg.argmax(1).numpy()

    def predict(self, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(digit, fg, bg) index arrays [N]; colour indices point into shared.digits.COLOURS."""
        return self._run(images)[1:]

    def features(self, images) -> np.ndarray:
        """Penultimate-layer features [N, D] for Frechet distances."""
        return self._run(images)[0]

    def attribute_accuracy(self, images, prompts: list[str]) -> dict[str, float]:
        """Per-attribute accuracy against the prompts: {"digit", "fg", "bg", "all"}."""
        if len(prompts) != len(images):
            raise DistillCacheError(
                f"{len(images)} images but {len(prompts)} prompts; pass one prompt per image"
            )
        wanted = np.array(
            [(d, COLOURS.index(fg), COLOURS.index(bg)) for d, fg, bg in map(parse_prompt, prompts)]
        )
        hits = np.stack(self.predict(images), axis=1) == wanted.reshape(len(prompts), 3)  # [N, 3]
        return {
            "digit": hits[:, 0].mean(),
            "fg": hits[:, 1].mean(),
            "bg": hits[:, 2].mean(),
            "all": hits.all(1).mean(),
        }

    def adherence(self, images, prompts: list[str]) -> float:
        """Fraction of images whose digit and both colours all match their prompt."""
        return float(self.attribute_accuracy(images, prompts)["all"])

    def fd_to_real(self, images, n_real: int = 2000, seed: int = 0) -> float:
        """Frechet distance between the images' features and `n_real` held-out real digits' features."""
        real, _ = make_images(n_real, seed=seed, split="heldout")
        return frechet_distance(self.features(images), self.features(real))


def load_judge(device: str = "cpu", path: str | Path = JUDGE_DIR) -> Judge:
    """The committed judge (or one saved by train_judge at `path`)."""
    path = Path(path)
    if not (path / WEIGHTS_NAME).is_file():
        raise DistillCacheError(
            f"no judge weights at {path / WEIGHTS_NAME}; run `python -m teacher_cache.embedded.train_judge`"
        )
    stored = json.loads((path / CONFIG_NAME).read_text())
    config = JudgeConfig(
        input_size=stored["input_size"], channels=tuple(stored["channels"]), feature_dim=stored["feature_dim"]
    )
    net = JudgeNet(config)
    net.load_state_dict(load_file(path / WEIGHTS_NAME))
    return Judge(net, config, device=device)
