# The README's commands. Each target installs what it needs first, so a
# fresh Debian 12 machine goes from a clean clone to a running daemon or a
# green test run with one command.

PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := libxen-dev xenstore-utils pkg-config gcc python3-dev
RUNDIR ?= $(CURDIR)/run
PREFIX ?= /opt/xenopsd
XEN_TOOLS := $(CURDIR)/build/xen-tools

.PHONY: deps test test-all run install lint bench xen-tools clean

# System packages (only those missing), then the package itself in editable
# mode with its test extras; this also compiles native/*.pyx.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(PYTHON) -m pip install -q -e '.[test]'

# Xen's own test tools (test-xenstore, verify-stream-v2), downloaded and
# unpacked from Debian's xen-utils-4.17, never installed.
xen-tools: $(XEN_TOOLS)/.unpacked
$(XEN_TOOLS)/.unpacked:
	mkdir -p $(XEN_TOOLS)
	cd $(XEN_TOOLS) && { apt-get download -q xen-utils-4.17 || \
	  { $(SUDO) apt-get update -qq && apt-get download -q xen-utils-4.17; }; } && \
	  dpkg -x xen-utils-4.17_*.deb root
	touch $@

test: deps xen-tools
	XEN_TOOLS=$(XEN_TOOLS)/root $(PYTHON) -m pytest -q -m "not slow"

test-all: deps xen-tools
	XEN_TOOLS=$(XEN_TOOLS)/root $(PYTHON) -m pytest -q

lint: deps
	$(PYTHON) -m ruff check xenopsd tests bench
	$(PYTHON) -m mypy

# A demo host: an emulated Xen host with xenopsd's xc backend on it, on
# $(RUNDIR)/sockets, with a few VMs started, in the foreground until Ctrl-C; it
# prints how to use xenops-cli. BACKEND=simulator: the simulator instead.
run: deps
	RUNDIR=$(RUNDIR) PYTHON=$(PYTHON) sh deploy/demo.sh

# The daemon, xenops-cli, systemd units, tmpfiles.d, /etc/xenopsd.conf and docs
# (see deploy/install.sh: a virtual environment at PREFIX, default /opt/xenopsd;
# DESTDIR stages into a tree instead).
install:
	DESTDIR=$(DESTDIR) PREFIX=$(PREFIX) PYTHON=$(PYTHON) sh deploy/install.sh

bench: deps
	$(PYTHON) -m pip install -q -e '.[bench]'
	for b in bench/*.py; do $(PYTHON) $$b || exit 1; done

clean:
	rm -rf build run *.egg-info native/*.c xenopsd/native/*.so
