# The two commands of README.md: `make demo` (set up, run the default job) and `make test`.
.PHONY: demo test setup bench-core
VENV := .venv

setup: $(VENV)/.ok
$(VENV)/.ok: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/todal run

test: setup
	$(VENV)/bin/python -m pytest -q

# Real-data benchmark of issue 2 (hours on 2 cores; resumable): benchmarks/fashion-mnist-core/
bench-core: setup
	$(VENV)/bin/python benchmarks/fashion_mnist_core.py
