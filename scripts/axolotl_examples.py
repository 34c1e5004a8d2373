"""How many of Axolotl's example configs `weave validate` accepts, and why the rest are refused.

python scripts/axolotl_examples.py PATH/TO/axolotl/examples

Each YAML file is validated as `weave validate` does (no model or data is loaded); the refused
ones are counted by the key at fault (a key may fault in several files).
"""

from __future__ import annotations

import collections
import logging
import re
import sys
from pathlib import Path

from axolotl_weave._errors import WeaveError
from axolotl_weave._pluginmanager import make_plugin_manager
from axolotl_weave._run import open_session


def main(folder: Path) -> None:
    """Print the accepted count and the most frequent keys of the refusals."""
    logging.disable(logging.CRITICAL)  # the warnings of ignored keys
    pm = make_plugin_manager()
    files = sorted(folder.rglob("*.y*ml"))
    accepted, faults = 0, collections.Counter()
    for path in files:
        try:
            open_session(path, [], pm)
            accepted += 1
        except WeaveError as exc:
            keys = re.findall(r"^  - ([\w.]+):", str(exc), re.M) or [str(exc).splitlines()[0]]
            faults.update({re.sub(r"\.\d+\.", ".N.", key) for key in keys})
    print(f"accepted {accepted} of {len(files)}")
    for key, count in faults.most_common(25):
        print(f"{count:5d}  {key}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
