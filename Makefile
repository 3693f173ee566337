# HeliosLogs — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:7300

.PHONY: install run test bench fuzz binary clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py helios/ingest/_flatjson.c helios/storage/_crc32c.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/helios serve --data-dir $(DATA_DIR) --listen $(LISTEN)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fuzz: install
	$(BIN)/python fuzz/run.py run --seconds $${FUZZ_SECONDS:-60}

binary: install
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller pyinstaller.spec
	@ls -l dist/helios

bench: install
	$(BIN)/python bench/query.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/compat.py
	$(BIN)/python bench/cache.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
