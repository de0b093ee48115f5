# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# arcade is used only for the CC0 sprite files it ships; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps arcade==3.3.3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/duogen demo

# Debian's chromium renders the compare report in tests/test_report_render.py (installed once, as root with apt).
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed (needs root and apt): the report-render test will be skipped"
	$(BIN)/python -m pytest -n auto

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs out report data/*.arrow
