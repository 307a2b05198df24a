"""Shared benchmark helpers: the machine's description, timing, and result tables.

Every benchmark times all contenders side by side in one process and records
ratios, with the machine described, under benchmarks/results/.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

RESULTS = Path(__file__).resolve().parent / "results"

ALLOCATOR_NOTE = (
    "glibc malloc was pinned (M_MMAP_THRESHOLD 1 GiB, M_TRIM_THRESHOLD 2 GiB): freed CPU tensors are reused "
    "instead of being returned to the OS, so no contender pays page faults that depend on what ran before it. "
    "This favours eager PyTorch, which allocates more temporaries."
)


def pin_allocator() -> bool:
    """Keep glibc from handing large freed blocks back to the OS between calls.

    By default glibc's mmap threshold moves with the history of allocations, so
    the same eager PyTorch expression measures up to 3x apart depending on what
    ran before it (page faults on fresh memory). Pinned, timings are repeatable.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        # mallopt takes a C int: 2 GiB - 1 is the largest trim threshold it can express.
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
            cwd=Path(__file__).parent, timeout=5,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    import pyprobtf

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyprobtf": f"{pyprobtf.__version__} ({_git_commit()})",
        "backends": {name: repr(status) for name, status in pyprobtf.ops.available_backends().items()},
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def gpu_slug(name: str) -> str:
    """A GPU's name made file-friendly, without the vendor: 'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' ->
    'h100-80gb-hbm3'."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug.removeprefix("nvidia-") or "gpu"


def device_slug(device: str) -> str:
    """'cpu', or the GPU's name (:func:`gpu_slug`), which results files carry: ``sampling-h200.md``."""
    if device == "cuda":
        return gpu_slug(torch.cuda.get_device_name(0))
    return "cpu"


def first_call(fn: Callable[[], object]) -> tuple[float | None, str | None]:
    """(seconds, None) of ``fn``'s first call, where torch.compile compiles, or (None, why it failed)."""
    start = time.perf_counter()
    try:
        fn()
    except Exception as error:  # noqa: BLE001 (e.g. Inductor finds no C++ compiler: skip the contender)
        return None, f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return time.perf_counter() - start, None


def measure(fn: Callable[[], object], *, min_run_time: float = 0.3) -> float:
    """Median seconds per call of ``fn`` (torch's Timer: warm-up, blocked runs, CUDA-synchronised)."""
    fn()  # warm-up: compilation, allocator caches, lazy imports
    fn()
    # Timer runs with ONE thread unless told otherwise; time with torch's own setting.
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy rate in bytes/s (read + write counted), the roofline for memory-bound ops."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src))
    return 2 * nbytes / seconds


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, device: str, info: dict, rows: Sequence[dict], columns: Sequence[str],
                  notes: Sequence[str] = (), out_dir: Path | None = None) -> Path:
    """Write ``<name>-<device>.md`` and ``.json`` under ``out_dir`` (default benchmarks/results/)."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}-{device_slug(device)}"
    machine_lines = [f"- {k}: {v}" for k, v in info.items() if k != "backends"]
    machine_lines += [f"- backend {k}: {v}" for k, v in info.get("backends", {}).items()]
    text = "\n".join(
        [f"# {name} benchmark ({device_slug(device)})", "", "## Machine", *machine_lines, "",
         "## Results", markdown_table(rows, columns), ""]
        + (["## Notes", *[f"- {n}" for n in notes], ""] if notes else [])
    )
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": list(rows), "notes": list(notes)},
                                                    indent=1))
    return stem.with_suffix(".md")


def publish(name: str, device: str, rows: Sequence[dict], columns: Sequence[str], notes: Sequence[str] = (),
            out_dir: Path | None = None) -> Path:
    """Describe the machine, write the tables (:func:`write_results`) and print them: every script's last step."""
    path = write_results(name, device, machine(device), rows, columns, notes, out_dir)
    print(markdown_table(rows, columns))
    print("\n".join(notes))
    print(f"\nwritten to {path}")
    return path


def load_note(load_before: float) -> str:
    """One line on how busy the machine was around a run (its 1-minute load average before and after)."""
    after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    verdict = ("above the core count: other processes were competing and the times are inflated (single ratios "
               "are noisy)" if max(load_before, after) > cores else "at or below the core count: no other "
               "heavy job was running")
    return (f"1-minute load average {load_before:.1f} before the run and {after:.1f} after it, on {cores} cores: "
            f"{verdict}.")
