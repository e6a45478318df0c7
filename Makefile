# Targets named in the README. PY defaults to the project venv made by `make install`.
PY ?= .venv/bin/python
CONSTRAINT := $(CURDIR)/.ci/constraints.txt

.PHONY: install demo corpora test test-fast slurm-up slurm-down bench

install:
	python3 -m venv .venv
	PIP_CONSTRAINT=$(CONSTRAINT) .venv/bin/pip install -e '.[dev,eval]'

demo:
	$(PY) -m xlbtm.scripts.quickstart

# the real corpora (manpages, gettext) from their Debian packages, into corpora/ (apt-get through sudo)
corpora:
	bash scripts/build_corpora.sh corpora

test:
	$(PY) -m pytest -q tests

test-fast:
	$(PY) -m pytest -q tests -m "not slow and not slurm"

# make slurm-up [NODES=2]: one node "localhost", or node1..N in network namespaces (slurm/local/README.md)
slurm-up:
	sudo -E bash slurm/local/start.sh $(if $(NODES),--nodes $(NODES)) || bash slurm/local/start.sh $(if $(NODES),--nodes $(NODES))

slurm-down:
	bash slurm/local/stop.sh

bench:
	$(PY) benchmarks/bench_corpus.py
