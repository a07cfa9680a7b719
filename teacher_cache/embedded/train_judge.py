"""Train the judge (digit, fg colour, bg colour classifier) and write shared/judge_weights/.

    python -m teacher_cache.embedded.train_judge [--out shared/judge_weights] [--steps 1200] [--threads 2]

Trains on `make_images(split="train")` with augmentations that imitate a generator's flaws (blur,
noise, colour drift), then measures per-attribute accuracy on `split="heldout"` digits (scans
disjoint from training) and writes it into judge_config.json beside the safetensors weights.
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from shared.digits import COLOURS, make_images, parse_prompt
from shared.judge import CONFIG_NAME, JUDGE_DIR, WEIGHTS_NAME, Judge, JudgeConfig, JudgeNet, to_judge_input


@dataclass(frozen=True)
class JudgeSettings:
    out: str = str(JUDGE_DIR)
    seed: int = 1
    pool_size: int = 24000
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-3
    eval_size: int = 3000
    threads: int = 2
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def labels_of(prompts: list[str]) -> torch.Tensor:
    """Prompts -> (digit, fg index, bg index) [N, 3] int64."""
    return torch.tensor(
        [(d, COLOURS.index(fg), COLOURS.index(bg)) for d, fg, bg in map(parse_prompt, prompts)]
    )


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur, per-image colour drift and pixel noise on images [B, 3, h, w] in [-1, 1]."""
    batch = len(images)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.rand(batch, 1, 1, 1, generator=generator)
    images = images + amount * (blurred - images)
    images = images + 0.12 * (torch.rand(batch, 3, 1, 1, generator=generator) - 0.5)
    images = images + 0.06 * torch.rand(batch, 1, 1, 1, generator=generator) * torch.randn(
        images.shape, generator=generator
    )
    return images.clamp(-1.0, 1.0)


def run(settings: JudgeSettings) -> dict[str, float]:
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    config = JudgeConfig()
    images, prompts = make_images(settings.pool_size, seed=settings.seed, split="train")
    inputs, labels = to_judge_input(images, config.input_size), labels_of(prompts)  # [N, 3, 16, 16], [N, 3]

    net = JudgeNet(config).to(settings.device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    started = time.time()
    for step in range(settings.steps):
        rows = torch.randint(len(inputs), (settings.batch_size,), generator=generator)
        batch = augment(inputs[rows], generator).to(settings.device)
        target = labels[rows].to(settings.device)
        _, digit, fg, bg = net(batch)
        loss = (
            F.cross_entropy(digit, target[:, 0])
            + F.cross_entropy(fg, target[:, 1])
            + F.cross_entropy(bg, target[:, 2])
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(
                f"judge step {step + 1:5d}  loss {loss.item():.4f}  {time.time() - started:5.0f}s", flush=True
            )

    # Held-out real digits: scans the judge never saw.
    judge = Judge(net.cpu(), config)
    real, real_prompts = make_images(settings.eval_size, seed=settings.seed + 1000, split="heldout")
    accuracy = {k: round(float(v), 4) for k, v in judge.attribute_accuracy(real, real_prompts).items()}
    print(f"judge held-out accuracy {accuracy}", flush=True)

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / WEIGHTS_NAME)
    record = {**asdict(config), "heldout_accuracy": accuracy, "settings": asdict(settings)}
    (out / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return accuracy


def parse_settings(argv: list[str] | None = None) -> JudgeSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(JudgeSettings()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    return JudgeSettings(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run(parse_settings())
