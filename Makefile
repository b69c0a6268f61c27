# The README's two commands are `make run` (the seed experiment) and `make test`.
# Every target creates .venv and installs the pinned requirements on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.seglib-installed
DETR_STAMP := $(VENV)/.seglib-detr-installed

.PHONY: install install-detr test unit notebooks ui lint demo study run bench bench-demo clean-demo

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

# The optional detr extra (transformers, for Mask2Former and notebook 07). The tests and the
# notebook runs install it; the base install above never needs it.
install-detr: $(DETR_STAMP)

$(DETR_STAMP): $(STAMP) requirements-detr.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-detr.txt
	touch $(DETR_STAMP)

# The README's test command: unit tests, every notebook under nbval in the smoke profile, then
# the notebooks in JupyterLab in a real browser.
test: install lint unit notebooks ui

lint: install
	$(PY) -m ruff check seglib tests bench notebooks/conftest.py
	$(PY) -m ruff format --check seglib tests bench notebooks/conftest.py

unit: install install-detr
	$(PY) -m pytest tests -q --ignore=tests/ui

# JupyterLab driven in Chromium (Debian's, via the playwright package; tests/ui/install_chromium.sh
# installs it): Run All is clean in every notebook and the sliders reach the config and figures.
ui: install install-detr
	$(PY) -m pytest tests/ui -q

# Notebooks run in a throw-away data folder so a test run never touches data/.
notebooks: install install-detr
	tmp=$$(mktemp -d) && \
	SEGLIB_PROFILE=smoke SEGLIB_DATA=$$tmp $(PY) -m pytest -q -p no:python --nbval-lax \
		--nbval-current-env --nbval-cell-timeout=600 notebooks; \
	status=$$?; rm -rf $$tmp; exit $$status

# Offline demo: synthetic data, 128 px, CPU; a model that learns the shapes. Each call is a new
# run (data/runs/<profile>/<timestamp>/); ends by printing the val mask AP50. It needs the base
# install only. Options go through ARGS, e.g. make demo ARGS="--run lr-high --set lr=0.02";
# PROFILE=smoke runs the CI cut (.ci/run does, first, on a fresh base install). Set on the
# command line only: a PROFILE in the environment is ignored.
PROFILE := demo
demo: install
	$(PY) -m seglib run --profile $(PROFILE) $(ARGS)

# Notebook 08 headless (the augmentation ablation and the data curve, study_seeds seeds each),
# which the offline demo leaves out: about half an hour on 2 CPU cores in the demo profile.
# It needs the profile's subset (notebook 01, run by `make demo`); finished contenders are
# reused, so a second call only scores. PROFILE and ARGS as for demo.
study: install
	$(PY) -m seglib run --profile $(PROFILE) --notebooks 08 $(ARGS)

# The seed experiment on real COCO: needs internet (COCO images, torchvision weights) or
# both already in place; fails fast otherwise and points to `make demo`.
run: install
	$(PY) -m seglib run --profile seed

bench: install
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py

# `make demo` timed as a user runs it, in a throw-away data folder: wall time per notebook and
# stage, the val mask AP50, the CPU, bf16 or not. Base install only. PROFILE as for demo;
# ARGS are bench/bench_demo.py's options, e.g. ARGS="--set num_epochs=1 --json demo-times.json".
bench-demo: install
	$(PY) bench/bench_demo.py --profile $(PROFILE) $(ARGS)
