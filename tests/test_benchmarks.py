"""The benchmark scripts run (in their quick mode) and write their tables: they cannot rot unnoticed."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("bench_*.py")))
def test_benchmark_quick_run(name, tmp_path):
    module = _load(name)
    assert module.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*.json")
    rows = json.loads(result.read_text())["rows"]
    assert rows and all(isinstance(r, dict) for r in rows)
    assert (tmp_path / result.name.replace(".json", ".md")).read_text().startswith("# ")
