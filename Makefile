# The README's two commands: `make demo` and `make test`. Both build .venv with Python 3.10 first.
VENV := .venv
PY := $(VENV)/bin/python
# lava-nc 0.10.0 imports only on Python 3.10: look on PATH first, then in pyenv's versions.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: python3.10 was not found on PATH (nor under ~/.pyenv/versions)."; \
		echo "       lava-nc 0.10.0 supports only Python 3.10; install it, or run: make PYTHON=/path/to/python3.10"; \
		exit 1; fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: venv
	$(VENV)/bin/spikedattn demo

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache
