"""What `weave bench` measures in a run, the same way for weave and the HF baseline: the wall time
and real tokens of each optimizer step, peak memory, a profile of a few steps, and what MFU needs
(the device's bf16 peak, the architecture's parameter count).

Not a plugin (no entry point): a helper of the `bench` command plugin.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axolotl_weave import WeaveError

if TYPE_CHECKING:
    from axolotl_weave_plugins.commands.bench import BenchSettings

log = logging.getLogger("axolotl_weave")

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"GB200|B200", 2250.0),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"GH200|H200|H100|H800", 989.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"RTX 4090", 165.0),
)
"""Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device-name pattern, first match
wins. NVIDIA's data sheets; the SXM parts at their boost clocks."""


@dataclass
class RunResult:
    """What one run (weave or hf) measured."""

    name: str
    tokens_per_second: float | None = None
    tokens_per_step: float | None = None
    seconds_per_step: float | None = None
    peak_memory_gib: float | None = None
    packing_efficiency: float | None = None
    micro_batch: str = ""
    gradient_accumulation_steps: int = 0
    final_loss: float | None = None
    mfu: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# --- the device ----------------------------------------------------------------------------------


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def synchronize() -> None:
    """Wait for the GPU's queued work (no-op on CPU), so that a clock reading means 'done'."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name() -> str:
    """The GPU's name, or the CPU's."""
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_tflops(device_name: str, explicit: float | None) -> float | None:
    """The dense bf16 peak of the device in TFLOP/s: `--peak-tflops`, else from its name."""
    if explicit:
        return explicit
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops
    return None


# --- MFU -----------------------------------------------------------------------------------------


def architecture_parameters(
    model_config: Any, *, trust_remote_code: bool = False, name: str = ""
) -> int | None:
    """Every parameter of the architecture `model_config` describes (`name`, for the warning),
    embeddings included, counted on the meta device (no memory; unaffected by quantization
    packing or adapters). None if it cannot be built."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                model_config, trust_remote_code=trust_remote_code
            )
    except Exception as exc:  # an exotic architecture: MFU is then n/a, the rest still works
        label = name or model_config.model_type
        log.warning("bench: cannot count the parameters of '%s' (%s): MFU n/a", label, exc)
        return None
    return sum(p.numel() for p in model.parameters())


def flops_factor(cfg: Any) -> int:
    """Training FLOPs per parameter and real token: 6 (forward 2, backward 4), or 4 when the
    base is frozen (`adapter:` set: no weight gradients); 2 more for DPO and IPO, whose step
    also runs the reference model forward (unless `precompute_ref_log_probs`)."""
    reference = getattr(cfg, "rl", None) in ("dpo", "ipo") and not getattr(
        cfg, "precompute_ref_log_probs", None
    )
    return (4 if getattr(cfg, "adapter", None) else 6) + (2 if reference else 0)


def mfu(
    tokens_per_second: float | None, flops_per_token: int | None, peak: float | None
) -> float | None:
    """Model FLOPs utilisation: FLOPs per second done / the peak in TFLOP/s; None when a part
    is unknown."""
    if not (tokens_per_second and flops_per_token and peak):
        return None
    return flops_per_token * tokens_per_second / (peak * 1e12)


# --- memory --------------------------------------------------------------------------------------


class MemoryMeter:
    """Peak memory of one run: the CUDA caching allocator's peak of allocated bytes on a GPU; on
    a CPU the process's peak resident set size (reset through /proc/self/clear_refs, Linux)."""

    def __init__(self) -> None:
        self.cuda = cuda_available()
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "process peak RSS (CPU)"

    def reset(self) -> None:
        """Start a new peak from the present use."""
        import gc

        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "process peak RSS since start (CPU; could not reset)"

    def peak_gib(self) -> float:
        """The peak since `reset`, in GiB."""
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**30
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30

    def reserved_gib(self) -> float | None:
        """The allocator's peak reserved memory (GPU only), in GiB."""
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_reserved() / 2**30


def free_memory(model_ref: Any = None) -> None:
    """Give back what the previous run left: compiled graphs, garbage, the CUDA cache; warn if
    the run's model (`model_ref`, a weak reference) is still alive, since the next run's peak
    memory would then include it."""
    import gc

    import torch

    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if model_ref is not None and model_ref() is not None:
        log.warning(
            "bench: the weave run's model is still referenced; the hf run's peak memory includes it"
        )


# --- steps ---------------------------------------------------------------------------------------


class StepClock:
    """Wall time and the real tokens counted so far, when training starts (step 0) and at the
    end of each optimizer step (the step's own tokens counted)."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.tokens: dict[int, int] = {}

    def begin(self, tokens_seen: int = 0) -> None:
        """Training starts (after the model and optimizer are built): step 0."""
        self.mark(0, tokens_seen)

    def mark(self, step: int, tokens_seen: int) -> None:
        """Step `step` has ended; the loop has counted `tokens_seen` real tokens so far, the
        step's own included."""
        synchronize()
        self.times[step] = time.perf_counter()
        self.tokens[step] = tokens_seen

    def window(self, first: int, last: int) -> tuple[float, int, list[float]]:
        """Seconds, real tokens and per-step seconds of steps `first..last` (1-based,
        inclusive)."""
        assert 0 in self.times, "the clock never began"
        if last not in self.times:
            raise WeaveError(
                f"the run ended after {max(self.times)} steps, before step {last} "
                "(does the data make enough micro-batches?)"
            )
        seconds = self.times[last] - self.times[first - 1]
        tokens = self.tokens[last] - self.tokens[first - 1]
        per_step = [self.times[k] - self.times[k - 1] for k in range(first, last + 1)]
        return seconds, tokens, per_step


class StepProfiler:
    """torch.profiler over steps `first+1 .. first+steps`; then a trace file and the top ops."""

    def __init__(self, label: str, first: int, steps: int, out_dir: Path | None) -> None:
        self.label, self.first, self.steps, self.out_dir = label, first, steps, out_dir
        self.profile: Any = None
        self.table: str | None = None
        self.trace: Path | None = None

    def after_step(self, step: int) -> None:
        """Called at the end of every step: starts after step `first`, stops after the last."""
        if self.out_dir is None:
            return
        if step == self.first and self.profile is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if cuda_available():
                activities.append(ProfilerActivity.CUDA)
            self.profile = profile(activities=activities)
            self.profile.start()
        elif self.profile is not None and self.table is None and step == self.first + self.steps:
            self.profile.stop()
            self.finish()

    def finish(self) -> None:
        """Write the Chrome trace and the table of the ops with the most self time."""
        assert self.out_dir is not None and self.profile is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.trace = self.out_dir / f"{self.label}-trace.json"
        self.profile.export_chrome_trace(str(self.trace))
        sort = "self_device_time_total" if cuda_available() else "self_cpu_time_total"
        self.table = self.profile.key_averages().table(sort_by=sort, row_limit=15)
        (self.out_dir / f"{self.label}-top-ops.txt").write_text(self.table)

    def info(self) -> dict[str, Any] | None:
        """Where the profile went (for the JSON), or None without `--profile`."""
        if self.trace is None:
            return None
        return {"trace": str(self.trace), "steps": self.steps}


class StepRecorder:
    """What a run records at its start and at each optimizer step's end, the same for weave and
    HF: the clock, and the profiler over the steps after the timed ones."""

    def __init__(self, name: str, settings: BenchSettings) -> None:
        self.name = name
        self.warmup, self.steps = settings.warmup, settings.steps
        self.clock = StepClock()
        self.profiler = StepProfiler(
            name, settings.warmup + settings.steps, settings.profile_steps, settings.profile_dir
        )

    def begin(self, tokens_seen: int) -> None:
        """Training starts: the clock's zero."""
        self.clock.begin(tokens_seen)

    def step_end(self, step: int, tokens_seen: int) -> None:
        """Step `step` ended with `tokens_seen` real tokens counted, its own included."""
        self.clock.mark(step, tokens_seen)
        self.profiler.after_step(step)

    def result(self, **fields: Any) -> RunResult:
        """The run's result: `fields`, with the speed and budget of the timed steps (`warmup+1 ..
        warmup+steps`) and where the profile went (last in `extra`)."""
        seconds, tokens, per_step = self.clock.window(self.warmup + 1, self.warmup + self.steps)
        extra = {**fields.pop("extra", {}), "profile": self.profiler.info()}
        return RunResult(
            name=self.name,
            tokens_per_second=tokens / max(seconds, 1e-9),
            tokens_per_step=tokens / self.steps,
            seconds_per_step=seconds / self.steps,
            step_seconds=per_step,
            extra=extra,
            **fields,
        )
