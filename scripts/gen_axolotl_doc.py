"""Write the generated part of docs/axolotl.md: every Axolotl key this project does not
implement, refused (it changes what is trained) or ignored (with why it does not).

python scripts/gen_axolotl_doc.py          # rewrite the part between the markers
python scripts/gen_axolotl_doc.py --check  # exit 1 if it is out of date (tests use this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from axolotl_weave._config import build_config_model
from axolotl_weave._hooks import Hooks
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave_plugins.compat._axolotl_ignored import ignored_reason
from axolotl_weave_plugins.compat._axolotl_keys import (
    AXOLOTL_DECISIVE_KEYS,
    AXOLOTL_TOP_LEVEL_KEYS,
)

TARGET = Path(__file__).resolve().parents[1] / "docs" / "axolotl.md"
START, END = "<!-- generated: keys -->", "<!-- end generated -->"


def classify() -> tuple[list[str], list[str], list[tuple[str, str]], list[str]]:
    """Axolotl's top-level keys as (implemented, refused, (ignored, why), unexplained)."""
    fields = build_config_model(Hooks(make_plugin_manager()).config_fields()).model_fields
    implemented, refused, ignored, unexplained = [], [], [], []
    for key in sorted(AXOLOTL_TOP_LEVEL_KEYS):
        if key in fields:
            implemented.append(key)
        elif key in AXOLOTL_DECISIVE_KEYS:
            refused.append(key)
        elif (reason := ignored_reason(key)) is not None:
            ignored.append((key, reason))
        else:
            unexplained.append(key)
    return implemented, refused, ignored, unexplained


def generated() -> str:
    """The markdown between the markers."""
    implemented, refused, ignored, unexplained = classify()
    if unexplained:
        raise SystemExit(f"Axolotl keys with no decision: {', '.join(unexplained)}")
    lines = [
        START,
        "",
        f"Of Axolotl's {len(AXOLOTL_TOP_LEVEL_KEYS)} top-level keys, {len(implemented)} are "
        f"implemented, {len(refused)} are refused and {len(ignored)} are ignored.",
        "",
        "### Refused: they change what is trained",
        "",
        "A run that sets one of these stops before any work with a message naming it (exit 2),",
        "rather than training something else than asked. Preference, RL and distributed keys",
        "are here until their plugins land.",
        "",
        ", ".join(f"`{key}`" for key in refused),
        "",
        "### Ignored, with a warning naming them: what is trained is the same",
        "",
        "| key | why it may be ignored |",
        "|---|---|",
        *(f"| `{key}` | {reason} |" for key, reason in ignored),
        "",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    """Rewrite (or, with --check, compare) the generated part of docs/axolotl.md."""
    text = TARGET.read_text()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    new = before + generated() + after
    if "--check" in sys.argv:
        if new != text:
            print(f"{TARGET} is out of date: run python scripts/gen_axolotl_doc.py")
            return 1
        return 0
    TARGET.write_text(new)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
