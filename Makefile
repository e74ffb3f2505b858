# The two commands of README.md: `make demo` (set up, run the default job) and `make test`.
.PHONY: demo test setup bench-cpu
VENV := .venv

setup: $(VENV)/.ok
$(VENV)/.ok: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/todal run

test: setup
	$(VENV)/bin/python -m pytest -q

