"""`added_tokens_overrides` (Axolotl's key): new texts for tokens the tokenizer added, such as the
reserved special tokens many models ship (Llama 3's `<|reserved_special_token_3|>`), so that a
chat template's `<tool_call>` is one trained token with an existing row, not new text.

The tokenizer is saved to a temporary folder, its files are edited (`tokenizer.json`'s added
tokens and, where the model's vocabulary lists the token, its entry; `tokenizer_config.json`'s
`added_tokens_decoder` and the lists of extra special tokens) and it is read back, as Axolotl
does. The ids, and so the embedding rows, stay; the saved tokenizer carries the new texts.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from axolotl_weave import ConfigError, WeaveError

log = logging.getLogger("axolotl_weave")

SPECIAL_LISTS = ("additional_special_tokens", "extra_special_tokens")
"""Config keys listing extra special tokens by their text (renamed along)."""


def check_overrides(tokenizer: Any, overrides: dict[int, str]) -> None:
    """Refuse an id the tokenizer did not add, its BOS/EOS/pad/UNK, or a text it already has."""
    added = tokenizer.added_tokens_decoder
    unknown = sorted(i for i in overrides if i not in added)
    if unknown:
        raise ConfigError(
            f"added_tokens_overrides: token id(s) {unknown} are not tokens the tokenizer added "
            f"(its added ids: {', '.join(map(str, sorted(added)[:12]))}...); only added "
            "(reserved) tokens can be renamed"
        )
    roles = {
        tokenizer.bos_token_id: "BOS",
        tokenizer.eos_token_id: "EOS",
        tokenizer.pad_token_id: "pad",
        tokenizer.unk_token_id: "UNK",
    }
    named = {i: roles[i] for i in overrides if i in roles and i is not None}
    if named:
        raise ConfigError(
            f"added_tokens_overrides: token id(s) {sorted(named)} are the tokenizer's "
            f"{', '.join(sorted(set(named.values())))} token; rename a reserved token instead"
        )
    vocab = tokenizer.get_vocab()
    taken = {text: vocab[text] for i, text in overrides.items() if vocab.get(text, i) != i}
    if taken:
        raise ConfigError(
            f"added_tokens_overrides: {taken} already name other tokens of the tokenizer"
        )


def renamed(entry: Any, old: dict[str, str]) -> Any:
    """A special-token list item (text or `{"content": ...}`) with its text renamed."""
    if isinstance(entry, str):
        return old.get(entry, entry)
    if isinstance(entry, dict) and "content" in entry:
        return {**entry, "content": old.get(entry["content"], entry["content"])}
    return entry


def edit_tokenizer_files(folder: Path, overrides: dict[int, str], old: dict[str, str]) -> None:
    """Rename the tokens in a saved tokenizer's `tokenizer.json` and `tokenizer_config.json`."""
    path = folder / "tokenizer.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data.get("added_tokens", []):
            if entry.get("id") in overrides:
                entry["content"] = overrides[entry["id"]]
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            for text, token_id in list(vocab.items()):
                if token_id in overrides:
                    vocab[overrides[token_id]] = vocab.pop(text)
        elif isinstance(vocab, list):  # a unigram model: [piece, score] by id
            for token_id, new in overrides.items():
                if token_id < len(vocab):
                    vocab[token_id][0] = new
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    path = folder / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder") or {}
        for token_id, new in overrides.items():
            if str(token_id) in decoder:
                decoder[str(token_id)]["content"] = new
        for key in SPECIAL_LISTS:
            if isinstance(config.get(key), list):
                config[key] = [renamed(entry, old) for entry in config[key]]
        path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")


def override_added_tokens(tokenizer: Any, overrides: dict[int, str]) -> Any:
    """The tokenizer with the added tokens of `overrides` ({id: new text}) renamed, read back
    from its edited files; checked to keep its length and to map each new text to its id."""
    check_overrides(tokenizer, overrides)
    old = {tokenizer.added_tokens_decoder[i].content: new for i, new in overrides.items()}
    size = len(tokenizer)
    with tempfile.TemporaryDirectory(prefix="weave-tokenizer-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        edit_tokenizer_files(folder, overrides, old)
        result = type(tokenizer).from_pretrained(folder)
    wrong = {t: result.convert_tokens_to_ids(t) for t in overrides.values()}
    wrong = {t: i for t, i in wrong.items() if overrides.get(i) != t}
    if len(result) != size or wrong:
        raise WeaveError(
            f"added_tokens_overrides: the renamed tokenizer does not map {wrong or 'its texts'} "
            f"to the ids given (length {len(result)}, was {size}); its files have a layout this "
            "rename does not know"
        )
    log.info("added_tokens_overrides: renamed %s", ", ".join(f"{k} -> {v}" for k, v in old.items()))
    return result
