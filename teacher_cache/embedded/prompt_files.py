"""The digit prompts as text files, one prompt a line, for `teacher-cache run --prompts FILE`.

    python -m teacher_cache.embedded.prompt_files     # rewrites prompts/train.txt and prompts/heldout.txt

train.txt = shared.digits.train_prompts() (what phase-one caches for training use), heldout.txt =
heldout_prompts() (students' unseen-prompt evaluation). A test checks the committed files are current.
"""

from pathlib import Path

from shared.digits import heldout_prompts, train_prompts

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
TRAIN_PROMPTS_FILE = PROMPTS_DIR / "train.txt"
HELDOUT_PROMPTS_FILE = PROMPTS_DIR / "heldout.txt"


def prompt_file_texts() -> dict[Path, str]:
    return {
        TRAIN_PROMPTS_FILE: "\n".join(train_prompts()) + "\n",
        HELDOUT_PROMPTS_FILE: "\n".join(heldout_prompts()) + "\n",
    }


def write_prompt_files() -> None:
    PROMPTS_DIR.mkdir(exist_ok=True)
    for path, text in prompt_file_texts().items():
        path.write_text(text)


if __name__ == "__main__":
    write_prompt_files()
