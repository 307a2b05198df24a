"""Self-checks of GPU kernels on the user's own device, run once and remembered on disk.

Before ``backend="auto"`` hands a call to a GPU kernel, the kernel runs its
op's self-check cases on that device (small inputs covering its dtypes and
code paths, compared with the reference by the op's contract: the cases of
``pyprobtf check``). The verdict is cached per (op, backend, GPU name, compute
capability, pyprobtf, torch, Triton and CUDA driver versions), so a new
driver, GPU or release checks again. A kernel that fails is not used: ``auto``
falls back to the next backend, with one warning naming the op, the kernel
and the error. A kernel first met while a CUDA graph is being captured cannot
be checked then (nothing may run outside the graph): ``auto`` takes the next
backend for the rest of the process (run ``pyprobtf check --device cuda``, or
one call outside the graph, to check it first).

Environment:
    ``PYPROBTF_VERIFIED_CACHE``: the cache file (default
    ``$XDG_CACHE_HOME/pyprobtf/verified.json``, else ``~/.cache/...``);
    ``off`` keeps verdicts in memory only.
    ``PYPROBTF_SELF_CHECK``: ``off`` runs no self-check: GPU kernels are then
    used by ``auto`` only where ``GPU_VERIFIED`` records a hardware run.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch

from pyprobtf.ops import _backends

_MEMORY: dict[str, dict] = {}  # verdicts of this process, by key


def cache_path() -> Path | None:
    """Where verdicts are stored, or None when disk caching is off."""
    value = os.environ.get("PYPROBTF_VERIFIED_CACHE", "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pyprobtf" / "verified.json"


def enabled() -> bool:
    return os.environ.get("PYPROBTF_SELF_CHECK", "").lower() != "off"


def device_identity(device: torch.device) -> dict:
    """What a verdict depends on besides the op and the backend."""
    import pyprobtf

    identity = {"device": device.type, "pyprobtf": pyprobtf.__version__, "torch": torch.__version__}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        identity |= {"gpu": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}",
                     "cuda": torch.version.cuda or "", "driver": _driver_version()}
    try:
        import triton

        identity["triton"] = triton.__version__
    except ImportError:
        identity["triton"] = ""
    return identity


def _driver_version() -> str:
    module, _ = _backends._load_cuda()
    if module is not None and hasattr(module, "driver_version"):
        return str(module.driver_version())
    return ""


def _key(op: str, backend: str, identity: dict) -> str:
    return json.dumps({"op": op, "backend": backend, **identity}, sort_keys=True)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("verdicts", {}) if isinstance(data, dict) else {}


def _write(path: Path, key: str, verdict: dict) -> None:
    """Add one verdict to the file (atomically: concurrent processes never see half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        verdicts = _read(path)
        verdicts[key] = verdict
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": "pyprobtf.verified/1", "verdicts": verdicts}, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"pyprobtf: could not write the self-check cache {path} ({exc}); checks will run again "
                      "next time (set PYPROBTF_VERIFIED_CACHE to a writable file, or to 'off')", RuntimeWarning,
                      stacklevel=2)


def run(op, backend: str, device: torch.device) -> dict:
    """Run ``op``'s self-check cases with ``backend`` on ``device``; the verdict."""
    from pyprobtf.testing import ops as cases

    start = time.perf_counter()
    count = 0
    try:
        for dtype in cases.DTYPES:
            for case in cases.REGISTRY[op.checks](backend, str(device), dtype, small=True):
                case()
                count += 1
    except Exception as exc:  # noqa: BLE001 (any failure refuses the kernel)
        return {"passed": False, "cases": count, "error": f"{type(exc).__name__}: {exc}".strip()[:500],
                "seconds": round(time.perf_counter() - start, 3), "date": time.strftime("%Y-%m-%d")}
    return {"passed": True, "cases": count, "error": "", "seconds": round(time.perf_counter() - start, 3),
            "date": time.strftime("%Y-%m-%d")}


def verdict(op, backend: str, device: torch.device) -> dict | None:
    """The cached or fresh verdict for ``op``'s ``backend`` kernel on ``device``; None when checks are off."""
    if not enabled():
        return None
    key = _key(op.name, backend, device_identity(device))
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_path()
    found = _read(path).get(key) if path is not None else None
    if found is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return {"passed": False, "error": "not checked yet: a CUDA graph is being captured", "transient": True}
        found = run(op, backend, device)
        if path is not None:
            _write(path, key, found)
    _MEMORY[key] = found
    return found


def passed(op, backend: str, device: torch.device) -> bool:
    """Whether ``auto`` may use ``backend`` for ``op`` on ``device``; warns once when a kernel failed."""
    result = verdict(op, backend, device)
    if result is None:
        return _backends.is_gpu_verified(op.name, backend)
    if not result["passed"] and not result.get("transient"):
        warnings.warn(
            f"{op.name}: the {backend} kernel failed its self-check on {_describe(device)} and is not used; "
            f"falling back to the next backend. Error: {result['error']}",
            RuntimeWarning,
            stacklevel=6,
        )
    return bool(result["passed"])


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return str(device)


def forget() -> None:
    """Drop this process's verdicts (the disk cache stays)."""
    _MEMORY.clear()
