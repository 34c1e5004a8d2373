"""Regenerate the bundled assets: data/alpaca_tiny.jsonl (and the chat, preference and KTO data
made from it) and tiny-llama/.

    python examples/build_tiny_assets.py

The data is a small, learnable alpaca-style set (arithmetic, word games, facts); the model is a
llama-architecture network with random weights and a byte-level BPE tokenizer trained on the data,
so the quickstart needs no download. Deterministic: the same files every time.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from axolotl_weave_testing import SAMPLE_TEXT, build_tiny_llama, write_jsonl

HERE = Path(__file__).parent
WORDS = (
    "cat dog sun tree bird fish moon star river apple stone cloud light green table water".split()
)
CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "day": "night",
    "old": "new",
    "open": "closed",
    "light": "dark",
    "early": "late",
    "full": "empty",
}


def make_rows(seed: int = 0) -> list[dict[str, str]]:
    """About 400 instruction rows of eight kinds."""
    rng = random.Random(seed)
    rows = []
    for _ in range(60):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        rows.append(
            {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        )
        rows.append(
            {
                "instruction": "Subtract the second number from the first.",
                "input": f"{a + b} - {b}",
                "output": str(a),
            }
        )
    for _ in range(50):
        word = rng.choice(WORDS)
        rows.append(
            {"instruction": "Reverse the letters of the word.", "input": word, "output": word[::-1]}
        )
        rows.append(
            {
                "instruction": "Write the word in capital letters.",
                "input": word,
                "output": word.upper(),
            }
        )
    for country, city in CAPITALS.items():
        for phrasing in ("What is the capital of {}?", "Name the capital city of {}."):
            rows.append(
                {
                    "instruction": phrasing.format(country),
                    "input": "",
                    "output": f"The capital of {country} is {city}.",
                }
            )
    for word, opposite in OPPOSITES.items():
        rows.append(
            {"instruction": "Give the opposite of the word.", "input": word, "output": opposite}
        )
        rows.append(
            {"instruction": "Give the opposite of the word.", "input": opposite, "output": word}
        )
    for _ in range(40):
        nums = rng.sample(range(100), 4)
        rows.append(
            {
                "instruction": "Sort the numbers from smallest to largest.",
                "input": ", ".join(map(str, nums)),
                "output": ", ".join(map(str, sorted(nums))),
            }
        )
    for _ in range(40):
        word = rng.choice(WORDS)
        rows.append(
            {
                "instruction": "How many letters are in the word?",
                "input": word,
                "output": f"The word {word} has {len(word)} letters.",
            }
        )
    rng.shuffle(rows)
    return rows


def to_conversation(row: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """An alpaca row as a chat: a system prompt, the user's request, the assistant's answer."""
    request = f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
    return {
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": request},
            {"role": "assistant", "content": row["output"]},
        ]
    }


def to_pairs(rows: list[dict[str, str]], count: int = 64) -> list[dict[str, str]]:
    """Preference pairs (`type: chatml.default`, `bradley_terry.chat_template`): the request as
    `input`, the right answer chosen, the next row's answer (a wrong one) rejected."""
    pairs = []
    for row, other in zip(rows, rows[1:], strict=False):
        if row["output"] == other["output"]:
            continue
        request = f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
        pairs.append(
            {
                "system": "You are a careful assistant.",
                "input": request,
                "chosen": row["output"],
                "rejected": other["output"],
            }
        )
        if len(pairs) == count:
            break
    return pairs


def to_kto(pairs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """KTO rows (`type: chatml.intel` under `rl: kto`): each pair's request with its chosen
    answer (label true) or its rejected one (false), alternately."""
    return [
        {
            "system": pair["system"],
            "question": pair["input"],
            "completion": pair["chosen"] if i % 2 == 0 else pair["rejected"],
            "label": i % 2 == 0,
        }
        for i, pair in enumerate(pairs)
    ]


def main() -> None:
    """Write the data, then train the tokenizer on it and save the random-weight model."""
    rows = make_rows()
    data = write_jsonl(HERE / "data" / "alpaca_tiny.jsonl", rows)
    write_jsonl(HERE / "data" / "chat_tiny.jsonl", [to_conversation(row) for row in rows])
    pairs = to_pairs(rows)
    write_jsonl(HERE / "data" / "preference_tiny.jsonl", pairs)
    write_jsonl(HERE / "data" / "kto_tiny.jsonl", to_kto(pairs))
    texts = [SAMPLE_TEXT, *(json.dumps(row) for row in rows)] * 2
    build_tiny_llama(HERE / "tiny-llama", texts, vocab_size=1024, hidden_size=128, layers=2)
    print(f"wrote {data} ({len(rows)} rows) and {HERE / 'tiny-llama'}")


if __name__ == "__main__":
    main()
