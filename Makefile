# Two commands: `make demo` runs the main job on an embedded default, `make test` runs the tests.
# Both do their own set-up (Mesa lavapipe when no GPU Vulkan device exists, the cached .venv, this package).
.PHONY: setup demo test clean
PY := .venv/bin/python

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m entry.demo $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf demo_output .pytest_cache
