# The two commands a newcomer needs (each sets up .venv on first use):
#   make demo   - the main job
#   make test   - the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pyprobtf-installed
NATIVE := $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/include/pyprobtf/*)

.PHONY: demo test bench gpu-verify clean

# Re-installs when the build inputs change (the C++/CUDA build is incremental).
$(STAMP): pyproject.toml CMakeLists.txt scripts/setup.sh scripts/peers.txt $(NATIVE)
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

# The main job: every family trained, measured and drawn (zoo-out/zoo.png, results.json), about 3 minutes.
demo: $(STAMP)
	$(VENV)/bin/pyprobtf zoo --out zoo-out

# Triton kernels run on CPU only in Triton's interpreter, which must be chosen
# before triton is imported: they get a pytest run of their own.
test: $(STAMP)
	$(PY) -m pytest -q --durations=12
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton

bench: $(STAMP)
	$(PY) benchmarks/bench_affine_coupling.py
	$(PY) benchmarks/bench_solvers.py
	$(PY) benchmarks/bench_sampling.py
	$(PY) benchmarks/bench_vq.py
	$(PY) benchmarks/bench_families.py --threads 1
	$(PY) benchmarks/bench_decoder_families.py --threads 1
	$(PY) benchmarks/bench_digits_continuous.py
	$(PY) benchmarks/bench_digits_decoders.py

# On a machine with an NVIDIA GPU: uses the CUDA torch already installed (docs/GPU.md).
gpu-verify:
	bash scripts/gpu_verify.sh

clean:
	rm -rf build $(VENV)
