"""`python -m axolotl_weave` is the `weave` command, for launchers that start a Python module:
`torchrun --nproc-per-node 2 -m axolotl_weave train CONFIG`, `accelerate launch -m ...`."""

from axolotl_weave._cli import main

main()
