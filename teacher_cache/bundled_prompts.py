"""The bundled prompt lists of the embedded teacher, generated from `shared.digits`.

    python -m teacher_cache.bundled_prompts          # rewrites teacher_cache/prompts/default_*.txt

`default_train.txt` = `train_prompts()` (what `make cache` captures), `default_unseen.txt` =
`heldout_prompts()` (the unseen-prompt eval store). A test checks the committed files match.
"""

from pathlib import Path

from shared.digits import heldout_prompts, train_prompts
from teacher_cache.config import DEFAULT_TRAIN_PROMPTS, DEFAULT_UNSEEN_PROMPTS


def bundled_prompt_texts() -> dict[Path, str]:
    """{file: its content}, one prompt a line."""
    return {
        DEFAULT_TRAIN_PROMPTS: "".join(f"{prompt}\n" for prompt in train_prompts()),
        DEFAULT_UNSEEN_PROMPTS: "".join(f"{prompt}\n" for prompt in heldout_prompts()),
    }


def write_bundled_prompt_files() -> None:
    for path, text in bundled_prompt_texts().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({text.count(chr(10))} prompts)")


if __name__ == "__main__":
    write_bundled_prompt_files()
