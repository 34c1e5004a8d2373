"""One optimizer over two: `torch.optim.Muon` for the parameter groups marked `muon`, and
`torch.optim.AdamW` for the others, sharing one list of groups (the schedule scales each group's
`lr`) and one state (checkpoints save and restore both).

Not a plugin (no entry point): a helper of the `muon` plugin of this folder, imported when an
optimizer is built (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the groups whose `muon` is true (2-D matrices only), AdamW on the others.

    The inner optimizers step over the very group dicts and state of this one, so anything that
    reads or edits `param_groups` or `state` (the schedule, checkpoints, methods' hooks) sees
    both; `load_state_dict` links them again to the restored groups.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        *,
        lr: float,
        muon: dict[str, Any],
        adamw: dict[str, Any],
    ) -> None:
        muon_groups = [group for group in param_groups if group["muon"]]
        adamw_groups = [group for group in param_groups if not group["muon"]]
        # each inner optimizer fills its defaults into its (shared) group dicts
        self.muon = torch.optim.Muon(muon_groups, lr=lr, **muon) if muon_groups else None
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, **adamw) if adamw_groups else None
        super().__init__([*muon_groups, *adamw_groups], {"lr": lr})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state."""
        for inner, is_muon in ((self.muon, True), (self.adamw, False)):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if g["muon"] is is_muon]
                inner.state = self.state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Muon step of the matrices and one AdamW step of the rest."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in (self.muon, self.adamw):
            if inner is not None:
                inner.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore groups and state, and link the inner optimizers to them."""
        super().load_state_dict(state_dict)
        self._link()
