# fsconvert: `make demo` converts the bundled sample; `make test` runs the tests.
# Both install what they need first: Debian/Ubuntu libraries (apt, via sudo unless root) and a venv.

VENV ?= .venv
PYTHON ?= python3
SAMPLE := samples/facescape_sample/images/1/1_neutral
ALIGN := samples/facescape_sample/Rt_scale_dict.json
OUT ?= out
# libgl/egl/osmesa: headless pyrender (OSMesa) and open3d; libusb, libgomp: open3d 0.19;
# libxrender1: pyglet, imported by pyrender; colmap: the COLMAP 3.8 CLI the tests load exports with.
APT_PACKAGES := libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libusb-1.0-0 libxrender1 libgomp1 colmap
# For `make test` only: chromium, in which the suite opens a check page in a real headless browser
# (23 packages, ~113 MB download, ~395 MB installed; ~16 s to install).
TEST_APT_PACKAGES := chromium

export PYOPENGL_PLATFORM := osmesa

.PHONY: demo test lint bench deps apt clean

demo: deps
	$(VENV)/bin/fsconvert info $(SAMPLE)
	$(VENV)/bin/fsconvert to-colmap $(SAMPLE) -o $(OUT)/colmap --overwrite --quiet
	$(VENV)/bin/fsconvert to-colmap $(SAMPLE) -o $(OUT)/3dgs --for 3dgs --overwrite --quiet
	$(VENV)/bin/fsconvert to-nerf $(SAMPLE) -o $(OUT)/nerf --normalize sphere --masks --depth --overwrite --quiet
	$(VENV)/bin/fsconvert to-open3d $(SAMPLE) -o $(OUT)/open3d --fuse --overwrite --quiet
	$(VENV)/bin/fsconvert info $(SAMPLE) --align $(ALIGN)
	$(VENV)/bin/fsconvert to-nerf $(SAMPLE) -o $(OUT)/nerf_tu --align $(ALIGN) --units m --depth --overwrite --quiet
	$(VENV)/bin/fsconvert to-neus $(SAMPLE) -o $(OUT)/neus --overwrite --quiet
	$(VENV)/bin/fsconvert to-llff $(SAMPLE) -o $(OUT)/llff --overwrite --quiet
	$(VENV)/bin/fsconvert to-colmap $(SAMPLE) -o $(OUT)/3dgs_depth --for 3dgs --depths --image-format png --alpha subject --overwrite --quiet
	$(VENV)/bin/fsconvert to-neus2 $(SAMPLE) -o $(OUT)/neus2 --overwrite --quiet
	$(VENV)/bin/fsconvert to-sdfstudio $(SAMPLE) -o $(OUT)/sdfstudio --masks --depth --overwrite --quiet
	$(VENV)/bin/fsconvert to-nersemble $(SAMPLE) -o $(OUT)/nersemble --align $(ALIGN) --units m --overwrite --quiet
	@echo "Exports and their check reports (check/index.html, check.json, rig.png, mv_result_<view>.jpg) are in $(OUT)/"

# The house's rules (pyproject.toml): the import contracts (layers, no circles, formats apart), ruff, strict mypy.
lint: deps
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check fsconvert exporters tests benchmarks
	$(VENV)/bin/mypy

test: lint
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(TEST_APT_PACKAGES)"
	$(VENV)/bin/python -m pytest

# Every benchmark of benchmarks/README.md in one run (~25 min on 2 cores): start-up, one tuple and a dataset on
# every core against the all-core bound, the PNG formats and open3d against theirs, the check's share.
bench: deps
	$(VENV)/bin/python benchmarks/bench_startup.py --repeat 5 --formats colmap,nerf,neus
	$(VENV)/bin/python benchmarks/bench_tuple.py --repeat 3 --dataset 4
	$(VENV)/bin/python benchmarks/bench_png.py --repeat 2
	$(VENV)/bin/python benchmarks/bench_memory.py
	$(VENV)/bin/python benchmarks/bench_check.py --repeat 2
	$(VENV)/bin/python benchmarks/bench_batch.py --quick

deps: apt $(VENV)/.installed

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then echo "install these system libraries: $$missing" >&2; exit 1; fi; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "apt: installing $$missing"; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
