"""Multi-process phase-two runs for the tests: `accelerate launch` of 2 CPU processes joined over gloo,
each training one or more TrainConfigs in turn (one launch pays the start-up once).

    result = launch_training([config_a, config_b], num_processes=2)            # train(config) for each
    result = launch_training([config], kill_after_step=3)                      # every rank SIGKILLs itself
    result = launch_cli(["run", "--cache", store, ...])                        # the real command line

Run as a script, this file is the launched worker: `python tests/train_processes.py CONFIGS.json
[KILL_AFTER_STEP]`, CONFIGS.json a list of TrainConfig field dicts.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from tests.capture_helpers import PYTHON, subprocess_env  # noqa: E402

TIMEOUT = 600


def launch_command(num_processes: int) -> list[str]:
    """accelerate launch of N processes; on a machine without GPUs, --multi_gpu starts them through
    torchrun and the training loop joins them over gloo."""
    return [
        *(PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu"),
        *("--num_processes", str(num_processes), "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
    ]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT)


def launch_training(
    configs: list, num_processes: int = 2, kill_after_step: int = 0
) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "configs.json"
        path.write_text(json.dumps([dataclasses.asdict(config) for config in configs]))
        return run([*launch_command(num_processes), __file__, str(path), str(kill_after_step)])


def launch_cli(arguments: list[str], num_processes: int = 2) -> subprocess.CompletedProcess:
    return run([*launch_command(num_processes), "-m", "student_train", *arguments])


def worker(configs_path: str, kill_after_step: int) -> None:
    import student_train.training.loop as training_loop
    from student_train.config import TrainConfig

    if kill_after_step:
        write = training_loop.TrainLog.write

        def killed_after(self, accelerator, step, *args):
            loss = write(self, accelerator, step, *args)
            if step == kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)  # as a crash or a preemption: no clean-up at all
            return loss

        training_loop.TrainLog.write = killed_after
    # Several runs in one launch: keep the process group between them (train() ends it), and let each
    # run set up accelerate afresh (mixed precision, accumulation) on it.
    from accelerate.state import AcceleratorState, PartialState

    destroy = PartialState.destroy_process_group
    PartialState.destroy_process_group = lambda self, group=None: None
    for fields in json.loads(Path(configs_path).read_text()):
        training_loop.train(TrainConfig(**fields))
        AcceleratorState._reset_state(reset_partial_state=False)
    destroy(PartialState())


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
