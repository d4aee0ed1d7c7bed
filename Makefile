# The README's two commands: `make demo` and `make test`. Both build .venv with Python 3.10 first.
VENV := .venv
PY := $(VENV)/bin/python
# lava-nc 0.10.0 imports only on Python 3.10: look on PATH first, then in pyenv's versions.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RT_SDIST := .cache/vaderSentiment-3.3.2.tar.gz

LOCK := requirements.lock

.PHONY: demo demo-text demo-text-t8 results test venv data lock clean

venv: $(VENV)/.installed

# Offline real data: Fashion-MNIST from Debian, the Rotten-Tomatoes sentences from the
# vaderSentiment sdist (MNIST-5k and MiniLM come with the pip dependencies).
data: venv $(FASHION_MNIST) $(RT_SDIST)

$(FASHION_MNIST):
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

$(RT_SDIST): | venv
	$(PY) -m lava_spikedattn.data

# Every package at the exact version in $(LOCK) (pip fails if the lock cannot be met);
# pyproject.toml keeps the compatible ranges for users who `pip install` the library.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: python3.10 was not found on PATH (nor under ~/.pyenv/versions)."; \
		echo "       lava-nc 0.10.0 supports only Python 3.10; install it, or run: make PYTHON=/path/to/python3.10"; \
		exit 1; fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) --upgrade pip setuptools
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[test]'
	@touch $@

# Re-resolve the newest versions pyproject.toml allows into $(LOCK), in a scratch venv.
# Run `make test` with the new lock before committing it.
lock:
	@if [ -z "$(PYTHON)" ]; then echo "error: python3.10 was not found (see make venv)"; exit 1; fi
	rm -rf .cache/lock-venv && $(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/python -m pip install --quiet --upgrade pip
	.cache/lock-venv/bin/python -m pip install --quiet '.[test]'
	{ echo "# Exact versions of every package make test and make demo install (Python 3.10, Linux x86_64)."; \
	  echo "# Made by \`make lock\` on $$(date +%Y-%m-%d); refresh it with \`make lock\` and commit it with the test run that passed."; \
	  .cache/lock-venv/bin/python -m pip freeze --all --exclude lava-spikedattn; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .cache/lock-venv

# MODEL=vit runs the shipped ViT instead of the Swin (any name or folder `spikedattn demo --model` takes).
demo: data
	$(VENV)/bin/spikedattn demo $(if $(MODEL),--model $(MODEL))

# MiniLM fine-tuned on Rotten-Tomatoes polarity (an SST-2 proxy), converted at T=16, B=1.4 and
# evaluated; its outputs are cached in .cache/demo-text/ (git-ignored), so a second run is fast.
demo-text: data
	$(PY) -m lava_spikedattn.text_demo

# MiniLM at T=8: fine-tuned on all train sentences (3 epochs), tuned phase-aware at T=8 (1 epoch),
# against the unprepared MiniLM fine-tuned the same way; cached in .cache/demo-text-t8/ (~45 min first).
demo-text-t8: data
	$(PY) -m lava_spikedattn.text_demo --cache-dir .cache/demo-text-t8 --limit-train all --epochs 3 \
		--timesteps 8 --phase-aware 1 --baseline

# Every measured number of the README, re-made into docs/results.json (24 min on a 2-core machine, 2026-12-05).
results: data
	$(PY) benchmarks/make_results.py

test: data
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache .cache
