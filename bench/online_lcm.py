"""lcm with the teacher in the training loop, as diffusers' train_lcm_distill_(lora_)sd_wds.py: the
baseline the cached recipe is measured against (bench_train.py, bench_lcm_recipe.py).

Per micro-batch, with the teacher pipeline (UNet, text encoder, VAE) in memory: text-encode the
prompts (cond and the empty prompt), VAE-encode fresh real images (the coloured digits, a new one per
sample and step, as the script streams its dataset), noise them to a timestep of LCM's solver grid
and run the teacher's cond + uncond passes there. All of that is phase one's own code
(teacher_cache/noised_points.py), so the batch holds exactly the noised fields a cached batch holds
(one point per sample) and the same loss object trains on it (`--points noised`): only *when* the
teacher runs differs.

    data = OnlineNoisedPoints(pipe, reader.settings, seed=0)
    train(config, data=data)          # student_train.training.loop, everything else as a cached run
"""

import torch

from shared.digits import train_prompts
from shared.noise import keyed_seed
from shared.schedule import NoiseSchedule
from student_train.data.batches import Batch
from teacher_cache.config import BUILTIN_DIGITS
from teacher_cache.image_source import load_images
from teacher_cache.noised_points import encode_images, noised_point_arrays
from teacher_cache.prompts import MAX_SEED, CaptureJob


class OnlineNoisedPoints:
    """A TrainingData stand-in whose batches the teacher computes when they are asked for.

    Positions index the digits' training prompts (504); the k-th batch's samples get the ids
    "online-{seed}-{k}-{j}", which seed their image, timestep, noise and VAE sample: fresh every step."""

    placement = "made by the teacher in the loop"
    nbytes = 0

    def __init__(self, pipe, settings: dict, seed: int = 0):
        self.pipe, self.seed = pipe, seed
        self.prompts = train_prompts()
        self.guidance = float(settings["guidance_scale"])
        self.grid_steps = int(settings["num_inference_steps"])
        self.image_size = tuple(settings["image_size"])
        self.schedule = NoiseSchedule.from_scheduler_config(
            settings["scheduler"]["config"], settings["scheduler"]["class"]
        )
        self.batches_made = 0

    def __len__(self) -> int:
        return len(self.prompts)

    @torch.no_grad()
    def batch(self, positions: torch.Tensor, device) -> Batch:
        k, self.batches_made = self.batches_made, self.batches_made + 1
        prompts = [self.prompts[p] for p in positions.tolist()]
        sample_ids = [f"online-{self.seed}-{k}-{j}" for j in range(len(prompts))]
        jobs = [
            CaptureJob(p, "", keyed_seed(sid) & MAX_SEED, self.guidance)
            for p, sid in zip(prompts, sample_ids)
        ]
        cond, uncond = self.pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[""] * len(prompts))
        x0 = encode_images(self.pipe, load_images(BUILTIN_DIGITS, jobs), sample_ids, self.image_size)
        first_call = {  # the arguments StableDiffusionPipeline passes its UNet ([uncond; cond])
            "encoder_hidden_states": torch.cat([uncond, cond]),
            "timestep": torch.zeros((), dtype=torch.long),
            "return_dict": False,
        }
        fields = noised_point_arrays(
            self.pipe.unet, self.schedule, first_call, "sample", x0, sample_ids, 1, self.grid_steps, cfg=True
        )
        fields = {name: value.to(device).float() for name, value in fields.items()}
        return Batch(fields, {"encoder_hidden_states": cond.float()}, sample_ids)

    def batches(self, schedule, device, read_ahead: int = 0):
        """As TrainingData.batches; made on demand (`read_ahead` has nothing to hide here)."""
        for positions in schedule:
            yield self.batch(positions, device)


def main(argv: list[str]) -> None:
    """`python -m bench.online_lcm --cache STORE --out DIR [student-train run flags]`: an lcm student
    trained with the teacher in the loop; the store gives the settings (schedule, grid, guidance) and is
    named in the exported distill.json, but no batch is read from it."""
    import argparse

    from diffusers import DiffusionPipeline

    from shared.config_flags import add_config_flags, config_from_args
    from shared.store import StoreReader
    from shared.teacher import loading_bars_hidden, resolve_teacher_source
    from student_train.config import TrainConfig
    from student_train.training.loop import train

    parser = argparse.ArgumentParser(
        prog="python -m bench.online_lcm", description=main.__doc__.splitlines()[0]
    )
    add_config_flags(parser, TrainConfig)
    config = config_from_args(TrainConfig, parser.parse_args(argv))
    torch.set_num_threads(config.threads or torch.get_num_threads())
    reader = StoreReader(config.cache)
    with loading_bars_hidden():
        pipe = DiffusionPipeline.from_pretrained(
            resolve_teacher_source(config.teacher or reader.teacher["source"])
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.requires_grad_(False).eval()
    train(config, data=OnlineNoisedPoints(pipe, reader.settings, config.seed))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
