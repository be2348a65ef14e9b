# mod_entra — build, test, install. `make help` lists the targets.
APXS    ?= apxs
PYTHON  ?= /usr/bin/python3
CC      ?= gcc
PKGS     = jansson libcurl openssl

CORE_SRC = $(wildcard mod_entra/entra_*.c)
GLUE_SRC = mod_entra/mod_entra.c $(filter-out mod_entra/mod_entra.c,$(wildcard mod_entra/mod_entra_*.c))
HDRS     = $(wildcard mod_entra/*.h)

WARN     = -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
OPT      = -O2 -g
ifeq ($(SANITIZE),1)
SAN      = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      = -O1 -g
endif

APR_CFLAGS  := $(shell apr-1-config --includes --cppflags 2>/dev/null) $(shell apu-1-config --includes 2>/dev/null)
APR_LIBS    := $(shell apr-1-config --link-ld --libs 2>/dev/null) $(shell apu-1-config --link-ld 2>/dev/null)
DEP_CFLAGS  := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEP_LIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# The sanitizer flavour builds into build/san/ so it never clobbers the normal build.
ifeq ($(SANITIZE),1)
MODULE   = build/san/mod_entra.so
UNIT_DIR = build/unit-san
else
MODULE   = mod_entra/.libs/mod_entra.so
UNIT_DIR = build/unit
endif
UNIT_SRC = $(wildcard t/unit/test_*.c)
UNIT_BIN = $(patsubst t/unit/%.c,$(UNIT_DIR)/%,$(UNIT_SRC))
HTTPD_CFLAGS := $(shell $(APXS) -q CFLAGS 2>/dev/null) $(shell $(APXS) -q EXTRA_CPPFLAGS 2>/dev/null) $(shell $(APXS) -q EXTRA_INCLUDES 2>/dev/null)

.PHONY: all module unit test test-unit test-e2e install clean help demo demo-stop deps

all: module

help:
	@echo "make            build $(MODULE)"
	@echo "make test       unit tests + end-to-end tests against a real apache2 (SANITIZE=1: ASan+UBSan)"
	@echo "make demo       start a demo httpd with mod_entra, a backend and a local token issuer"
	@echo "make demo-stop  stop the demo"
	@echo "make install    install the module and conf/entra.{load,conf} for a2enmod entra"
	@echo "make deps       install the Debian packages needed to build and test (as root)"

module: $(MODULE)

comma := ,

# apxs/libtool build all sources into the DSO.
mod_entra/.libs/mod_entra.so: $(CORE_SRC) $(GLUE_SRC) $(HDRS) Makefile
	@echo "  APXS  $@"
	@cd mod_entra && $(APXS) -c -o mod_entra.la \
	  $(addprefix -Wc$(comma),$(WARN) $(OPT) $(DEP_CFLAGS)) \
	  $(notdir $(GLUE_SRC) $(CORE_SRC)) $(DEP_LIBS) >build.log 2>&1 || { cat build.log; exit 1; }

# ASan+UBSan DSO; apache2 runs it with the sanitizer runtimes preloaded (see t/lib/httpd.py).
build/san/mod_entra.so: $(CORE_SRC) $(GLUE_SRC) $(HDRS) Makefile
	@mkdir -p build/san
	$(CC) -shared -fPIC $(HTTPD_CFLAGS) $(WARN) $(OPT) $(SAN) $(DEP_CFLAGS) -o $@ \
	  $(GLUE_SRC) $(CORE_SRC) $(DEP_LIBS)

$(UNIT_DIR)/test_%: t/unit/test_%.c t/unit/unit.h $(CORE_SRC) $(HDRS)
	@mkdir -p $(UNIT_DIR)
	$(CC) $(WARN) $(OPT) $(SAN) -Imod_entra -It/unit $(APR_CFLAGS) $(DEP_CFLAGS) -o $@ $< $(CORE_SRC) $(APR_LIBS) $(DEP_LIBS) -lpthread

unit: $(UNIT_BIN)

test-unit: unit
	@set -e; for t in $(UNIT_BIN); do $$t; done

test-e2e: module
	ENTRA_SANITIZE=$(SANITIZE) ENTRA_MODULE=$(CURDIR)/$(MODULE) $(PYTHON) -m pytest -q t/

# `make test` and `make demo` first install missing Debian packages (as root) or name them.
test: deps
	@$(MAKE) --no-print-directory test-unit test-e2e

install: module
	$(APXS) -i -n entra $(MODULE)
	install -m 644 conf/entra.load conf/entra.conf $$(apxs -q SYSCONFDIR)/mods-available/

deps:
	@sh t/deps.sh

demo: deps
	@$(MAKE) --no-print-directory module
	@$(PYTHON) t/demo.py start

demo-stop:
	@$(PYTHON) t/demo.py stop

clean:
	rm -rf mod_entra/*.o mod_entra/*.lo mod_entra/*.slo mod_entra/*.la mod_entra/.libs build
