# The whole set-up on a fresh machine: `make train` (train + evaluate the default) and `make test`.
PY312 := $(shell for p in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
PY311 := $(shell for p in python3.11 /root/.pyenv/versions/3.11*/bin/python3.11 /usr/local/bin/python3.11 /usr/bin/python3.11; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
# The conversion tests' PyTorch references (transformers, open_clip) live in their own venv.
REF := .venv-ref
WORKDIR ?= runs/default
PYTEST_ARGS ?=
# `make train JAX_PLATFORMS=cuda` trains on a GPU; tests always run on the CPU.
JAX_PLATFORMS ?= cpu

.PHONY: venv test durations train clean
venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements.txt pyproject.toml constraints.txt
	@test -n "$(PY312)" || { echo "error: python3.12 not found; install Python 3.12 (jax 0.12 needs it)"; exit 1; }
	$(PY312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q -e ".[text]" -c constraints.txt
	touch $@

# Tests also need the extras: pytest and chex, libtpu (pod compile), matplotlib (bench plots), scikit-learn (digits example), av and soundfile (mp4 / flac shard members).
$(VENV)/.test-stamp: $(VENV)/.stamp pyproject.toml constraints.txt
	$(PY) -m pip install -q -e ".[test,tpu,bench,text,media]" -c constraints.txt
	touch $@

$(REF)/.stamp: requirements-reference.txt
	@test -n "$(PY311)" || { echo "error: python3.11 not found; the reference venv (torch, transformers, open_clip) needs it"; exit 1; }
	$(PY311) -m venv $(REF)
	$(REF)/bin/python -m pip install -q -r requirements-reference.txt
	touch $@

# Two workers, whole files each, longest files first (tests/durations.json); the 25 slowest
# tests are printed after the run. `make durations` rewrites the durations report. A worker
# that crashes ends the run (--max-worker-restart=0): after one such crash with whole-file
# scheduling, xdist 3.8 replaced the worker and then left both workers idle, never finishing.
DURATIONS := .pytest_cache/mmjax-durations
test: $(VENV)/.test-stamp $(REF)/.stamp
	rm -rf $(DURATIONS)
	JAX_PLATFORMS=cpu MMJAX_DURATIONS_DIR=$(DURATIONS) $(PY) -m pytest -n 2 --dist loadfile \
	  --no-loadscope-reorder --max-worker-restart=0 --timeout=900 $(PYTEST_ARGS); rc=$$?; \
	  MMJAX_DURATIONS_DIR=$(DURATIONS) $(PY) -m tests.durations; exit $$rc

durations: test
	MMJAX_DURATIONS_DIR=$(DURATIONS) $(PY) -m tests.durations --write

train: venv
	JAX_PLATFORMS=$(JAX_PLATFORMS) $(PY) train.py --config=configs/default.py --workdir=$(WORKDIR)
	JAX_PLATFORMS=$(JAX_PLATFORMS) $(PY) eval.py --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) $(REF) runs
