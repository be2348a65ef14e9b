# mod_entra — build, test, install. `make help` lists the targets.
APXS    ?= apxs
PYTHON  ?= /usr/bin/python3
CC      ?= gcc
PKGS     = jansson libcurl openssl
LUA_PKG  = lua5.4

CORE_SRC = $(wildcard mod_entra/entra_*.c)
GLUE_SRC = mod_entra/mod_entra.c $(filter-out mod_entra/mod_entra.c,$(wildcard mod_entra/mod_entra_*.c))
LUAV_SRC = lua/entra_lua_json.c
HDRS     = $(wildcard mod_entra/*.h lua/*.h)
LUA_CFLAGS := $(shell pkg-config --cflags $(LUA_PKG) 2>/dev/null) -Ilua
LUA_LIBS    := $(shell pkg-config --libs $(LUA_PKG) 2>/dev/null)

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
LUAMOD   = build/san/entra.so
UNIT_DIR = build/unit-san
else
MODULE   = mod_entra/.libs/mod_entra.so
LUAMOD   = lua/entra.so
UNIT_DIR = build/unit
endif
LUAMOD_SRC = $(wildcard lua/lua_entra.c)
UNIT_SRC = $(wildcard t/unit/test_*.c)
UNIT_BIN = $(patsubst t/unit/%.c,$(UNIT_DIR)/%,$(UNIT_SRC))
HTTPD_CFLAGS := $(shell $(APXS) -q CFLAGS 2>/dev/null) $(shell $(APXS) -q EXTRA_CPPFLAGS 2>/dev/null) $(shell $(APXS) -q EXTRA_INCLUDES 2>/dev/null)

.PHONY: bench all module luamod unit test test-unit test-e2e install clean help demo demo-stop deps

all: module $(if $(LUAMOD_SRC),luamod)

help:
	@echo "make            build $(MODULE)"
	@echo "make test       unit tests + end-to-end tests against a real apache2 (SANITIZE=1: ASan+UBSan)"
	@echo "make demo       start a demo httpd with mod_entra, a backend and a local token issuer"
	@echo "make demo-stop  stop the demo"
	@echo "make bench      benchmark against no auth and the peers (BENCH_ARGS=--smoke: short)"
	@echo "make install    install the module and conf/entra.{load,conf} for a2enmod entra"
	@echo "make deps       install the Debian packages needed to build and test (as root)"

module: $(MODULE)

luamod: $(LUAMOD)

comma := ,

# apxs/libtool build all sources into the DSO.
# Lua 5.4 is linked as Debian's shared liblua5.4, whose symbols are versioned (LUA_5.4):
# they cannot bind to mod_lua's Lua 5.3 in the same httpd.
mod_entra/.libs/mod_entra.so: $(CORE_SRC) $(GLUE_SRC) $(LUAV_SRC) $(HDRS) Makefile
	@echo "  APXS  $@"
	@cd mod_entra && $(APXS) -c -o mod_entra.la \
	  $(addprefix -Wc$(comma),$(WARN) $(OPT) $(DEP_CFLAGS) $(LUA_CFLAGS:-Ilua=-I../lua)) \
	  $(notdir $(GLUE_SRC) $(CORE_SRC)) $(addprefix ../,$(LUAV_SRC)) \
	  $(DEP_LIBS) $(LUA_LIBS) >build.log 2>&1 || { cat build.log; exit 1; }

# ASan+UBSan DSO; apache2 runs it with the sanitizer runtimes preloaded (see t/lib/httpd.py).
build/san/mod_entra.so: $(CORE_SRC) $(GLUE_SRC) $(LUAV_SRC) $(HDRS) Makefile
	@mkdir -p build/san
	$(CC) -shared -fPIC $(HTTPD_CFLAGS) $(WARN) $(OPT) $(SAN) $(DEP_CFLAGS) $(LUA_CFLAGS) -o $@ \
	  $(GLUE_SRC) $(CORE_SRC) $(LUAV_SRC) $(DEP_LIBS) $(LUA_LIBS)

# The standalone `require "entra"` module: the same core, no httpd. Lua C modules take the
# Lua API from the interpreter, so liblua is not linked.
$(LUAMOD): $(LUAMOD_SRC) $(LUAV_SRC) $(CORE_SRC) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC $(WARN) $(OPT) $(SAN) -Imod_entra $(APR_CFLAGS) $(DEP_CFLAGS) $(LUA_CFLAGS) \
	  -o $@ $(LUAMOD_SRC) $(LUAV_SRC) $(CORE_SRC) $(APR_LIBS) $(DEP_LIBS)

$(UNIT_DIR)/test_%: t/unit/test_%.c t/unit/unit.h $(CORE_SRC) $(HDRS)
	@mkdir -p $(UNIT_DIR)
	$(CC) $(WARN) $(OPT) $(SAN) -Imod_entra -It/unit $(APR_CFLAGS) $(DEP_CFLAGS) -o $@ $< $(CORE_SRC) $(APR_LIBS) $(DEP_LIBS) -lpthread

unit: $(UNIT_BIN)

test-unit: unit
	@set -e; for t in $(UNIT_BIN); do $$t; done

test-e2e: module $(if $(LUAMOD_SRC),luamod)
	ENTRA_SANITIZE=$(SANITIZE) ENTRA_MODULE=$(CURDIR)/$(MODULE) ENTRA_LUAMOD=$(CURDIR)/$(LUAMOD) \
	  $(PYTHON) -m pytest -q t/

# `make test` and `make demo` first install missing Debian packages (as root) or name them.
# The status page test loads the page in a real browser (headless Chromium).
test: export EXTRA_PKGS = chromium
test: deps
	@$(MAKE) --no-print-directory test-unit test-e2e

install: module $(if $(LUAMOD_SRC),luamod)
	$(APXS) -i -n entra $(MODULE)
	install -m 644 conf/entra.load conf/entra.conf $$(apxs -q SYSCONFDIR)/mods-available/

deps:
	@sh t/deps.sh

demo: deps
	@$(MAKE) --no-print-directory module
	@$(PYTHON) t/demo.py start

# Side-by-side benchmark (prints a table; not a test). BENCH_ARGS=--smoke for a short run.
bench: export EXTRA_PKGS = wrk libapache2-mod-auth-openidc libapache2-mod-oauth2
bench: deps
	@$(MAKE) --no-print-directory module
	@$(PYTHON) t/bench/bench.py $(BENCH_ARGS)

demo-stop:
	@$(PYTHON) t/demo.py stop

clean:
	rm -rf mod_entra/*.o mod_entra/*.lo mod_entra/*.slo mod_entra/*.la mod_entra/.libs build
