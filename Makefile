# The two commands: `make demo` and `make test`. Each creates or updates .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: demo test bench lint venv node clean flink-jobserver flink-dist flink-fetch flink-up flink-down graylog-receiver

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

venv: $(STAMP)

node: $(NODE_STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.flowlogs --runner=DirectRunner --demo
	$(PY) -m pipelines.cloudtrail --runner=DirectRunner --demo

# `make test SKIP_FLINK=1` leaves out the Flink tests (and the downloads they need).
test: $(STAMP) $(NODE_STAMP) graylog-receiver $(if $(SKIP_FLINK),,flink-fetch)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(if $(SKIP_FLINK),-m "not flink")

# A GELF input made of Graylog 6.3's own classes, which judges what the tests send (tests/graylog/;
# built by Maven from Maven Central, cached in .cache/graylog/).
graylog-receiver: $(STAMP)
	$(PY) -m tests.graylog_receiver build

# Beam's Flink job server jar, built by Maven from Maven Central (cached in .cache/flink/).
flink-jobserver: $(STAMP)
	$(PY) -m flink.cluster jobserver

# A Flink distribution matching the job server, from PyPI (cached in .cache/flink/).
flink-dist: $(STAMP)
	$(PY) -m flink.cluster dist

flink-fetch: flink-jobserver flink-dist

# A standalone Flink cluster on 127.0.0.1:8081 with a Beam worker pool on :50000 (README: Run on Flink).
flink-up: flink-fetch
	$(PY) -m flink.cluster start

flink-down: $(STAMP)
	$(PY) -m flink.cluster stop

# Every benchmark (about 6 minutes once Flink is fetched): a table, also written to bench/results/<date>.json.
bench: $(STAMP) flink-fetch
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) tests/node/node_modules .pytest_cache .cache
