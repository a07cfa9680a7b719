"""A word-level CLIP tokenizer for the digit grammar, generated offline (nothing is downloaded).

CLIP's tokenizer is byte-pair encoding: a word starts as characters (the last one with "</w>") and
merges are applied in rank order. We learn the merges the way BPE training does (Sennrich et al.,
"Neural Machine Translation of Rare Words with Subword Units"): repeatedly merge the most frequent
adjacent pair over the word list until every word is a single token. Encoding a word with those
merges replays the training, so each grammar word becomes exactly one token.

    tokenizer = build_word_tokenizer(folder)     # CLIPTokenizer; writes folder/vocab.json, merges.txt
"""

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

from shared.digits import COLOURS, DIGIT_WORDS

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
GRAMMAR_WORDS = ("a", "on", *COLOURS, *DIGIT_WORDS)
MAX_LENGTH = 8  # <|startoftext|> + 5 words + <|endoftext|>, padded to 8


def learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """BPE merges, in rank order, that turn every word into the single token word + '</w>'."""
    pieces = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges = []
    while any(len(p) > 1 for p in pieces.values()):
        pairs = Counter(pair for p in pieces.values() for pair in zip(p[:-1], p[1:]))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))  # most frequent, ties alphabetical
        merges.append(best)
        for word, p in pieces.items():
            merged, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    merged.append(p[i] + p[i + 1])
                    i += 2
                else:
                    merged.append(p[i])
                    i += 1
            pieces[word] = merged
    return merges


def word_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Special tokens, every lowercase letter alone and as a word end, then every merge result."""
    tokens = [*SPECIAL_TOKENS]
    tokens += [c for c in "abcdefghijklmnopqrstuvwxyz"] + [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens += [left + right for left, right in merges]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_word_tokenizer(folder: Path, words: tuple[str, ...] = GRAMMAR_WORDS) -> CLIPTokenizer:
    """Write vocab.json + merges.txt into `folder` and load them as a CLIPTokenizer (max length 8)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(words)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(word_vocab(merges), indent=0))
    merges_path.write_text("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=MAX_LENGTH)
