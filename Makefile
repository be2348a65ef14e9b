# mod_entra — build, test, install. `make help` lists the targets.
APXS    ?= apxs
PYTHON  ?= /usr/bin/python3
CC      ?= gcc
PKGS     = jansson libcurl openssl
LUA_PKG  = lua5.4

CORE_SRC = $(wildcard mod_entra/entra_*.c)
GLUE_SRC = mod_entra/mod_entra.c $(filter-out mod_entra/mod_entra.c,$(wildcard mod_entra/mod_entra_*.c))
LUAV_SRC = lua/entra_lua_json.c lua/entra_lua_claims.c
HDRS     = $(wildcard mod_entra/*.h lua/*.h)
LUA_CFLAGS := $(shell pkg-config --cflags $(LUA_PKG) 2>/dev/null) -Ilua
LUA_LIBS    := $(shell pkg-config --libs $(LUA_PKG) 2>/dev/null)

WARN     = -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
OPT      = -O2 -g
ifeq ($(SANITIZE),1)
SAN      = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      = -O1 -g
endif
# ThreadSanitizer with clang: gcc's refuses the verdict table's standalone fences.
ifeq ($(TSAN),1)
CC       = clang-14
SAN      = -fsanitize=thread -fno-omit-frame-pointer
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
else ifeq ($(TSAN),1)
MODULE   = mod_entra/.libs/mod_entra.so
LUAMOD   = build/tsan/entra.so
UNIT_DIR = build/unit-tsan
else
MODULE   = mod_entra/.libs/mod_entra.so
LUAMOD   = lua/entra.so
UNIT_DIR = build/unit
endif
LUAMOD_SRC = $(wildcard lua/lua_entra.c)
UNIT_SRC = $(wildcard t/unit/test_*.c)
UNIT_BIN = $(patsubst t/unit/%.c,$(UNIT_DIR)/%,$(UNIT_SRC))
HTTPD_CFLAGS := $(shell $(APXS) -q CFLAGS 2>/dev/null) $(shell $(APXS) -q EXTRA_CPPFLAGS 2>/dev/null) $(shell $(APXS) -q EXTRA_INCLUDES 2>/dev/null)

.PHONY: fuzz fuzz-build scan-build scan-objs bench soak all module luamod unit test test-unit test-e2e install deb clean help test-mpm demo demo-stop deps

all: module $(if $(LUAMOD_SRC),luamod)

help:
	@echo "make            build $(MODULE)"
	@echo "make test       unit tests + end-to-end tests against a real apache2 (SANITIZE=1: ASan+UBSan)"
	@echo "make test-mpm   a third of the end-to-end tests under the worker and prefork MPMs"
	@echo "make test-unit TSAN=1  the C unit tests under ThreadSanitizer"
	@echo "make fuzz       every libFuzzer harness in t/fuzz/ for FUZZ_SECONDS (default 60) each"
	@echo "make scan-build the clang static analyzer over the module and the Lua module"
	@echo "make demo       start a demo httpd with mod_entra, a backend and a local token issuer"
	@echo "make demo-stop  stop the demo"
	@echo "make bench      benchmark against no auth and the peers (BENCH_ARGS=--smoke: short)"
	@echo "make soak       SOAK_SECONDS (default 60) of mixed load at 256 connections with two graceful restarts"
	@echo "make install    install the module, conf/entra.{load,conf}, the Lua module, entra-token (DESTDIR honoured)"
	@echo "make deb        build build/deb/libapache2-mod-entra_*.deb (dpkg-buildpackage)"
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
	  $(addprefix -Wc$(comma),$(WARN) $(OPT) -I. $(DEP_CFLAGS) $(LUA_CFLAGS:-Ilua=-I../lua)) \
	  $(notdir $(GLUE_SRC) $(CORE_SRC)) $(addprefix ../,$(LUAV_SRC)) \
	  $(DEP_LIBS) $(LUA_LIBS) >build.log 2>&1 || { cat build.log; exit 1; }

# ASan+UBSan DSO; apache2 runs it with the sanitizer runtimes preloaded (see t/lib/httpd.py).
build/san/mod_entra.so: $(CORE_SRC) $(GLUE_SRC) $(LUAV_SRC) $(HDRS) Makefile
	@mkdir -p build/san
	$(CC) -shared -fPIC $(HTTPD_CFLAGS) $(WARN) $(OPT) $(SAN) -Imod_entra $(DEP_CFLAGS) $(LUA_CFLAGS) -o $@ \
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
	  $(PYTHON) -m pytest -q --durations=15 t/

# A representative third of the end-to-end suite (inbound, keys across processes and their
# faults, outbound, Lua rules) under the worker and prefork MPMs; the whole suite runs under event.
MPM_TESTS = t/test_inbound_answers.py t/test_inbound_keys.py t/test_inbound_cache.py \
            t/test_outbound_refresh.py t/test_outbound_concurrency.py t/test_lua_rules.py \
            t/test_inbound_sections.py t/test_faults_inbound.py
# Under prefork the tests that count fetches or need two children to share a verdict assume
# event's fixed two children; prefork starts and retires processes as load comes and goes.
PREFORK_TESTS = $(filter-out t/test_inbound_keys.py t/test_inbound_cache.py,$(MPM_TESTS))
test-mpm: module $(if $(LUAMOD_SRC),luamod)
	@set -e; for mpm in worker prefork; do echo "== MPM $$mpm"; \
	  if [ $$mpm = prefork ]; then tests="$(PREFORK_TESTS)"; else tests="$(MPM_TESTS)"; fi; \
	  ENTRA_MPM=$$mpm ENTRA_SANITIZE=$(SANITIZE) ENTRA_MODULE=$(CURDIR)/$(MODULE) \
	  ENTRA_LUAMOD=$(CURDIR)/$(LUAMOD) $(PYTHON) -m pytest -q $$tests; done

# `make test` and `make demo` first install missing Debian packages (as root) or name them.
# The MPM runs are part of the plain run (the sanitizer run keeps to event, for CI's time).
# The status page test loads the page in a real browser (headless Chromium).
test: export EXTRA_PKGS = chromium
test: deps
	@$(MAKE) --no-print-directory test-unit $(if $(filter 1,$(SANITIZE)),,test-mpm) test-e2e

# Install locations (Debian's); DESTDIR prefixes them all, as packaging expects.
LIBEXECDIR   := $(shell $(APXS) -q LIBEXECDIR 2>/dev/null)
SYSCONFDIR   := $(shell $(APXS) -q SYSCONFDIR 2>/dev/null)
MULTIARCH    := $(shell $(CC) -print-multiarch 2>/dev/null)
LUA_CMOD_DIR ?= /usr/lib/$(MULTIARCH)/lua/5.4
BINDIR       ?= /usr/bin

install: module $(if $(LUAMOD_SRC),luamod)
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(SYSCONFDIR)/mods-available \
	  $(DESTDIR)$(LUA_CMOD_DIR) $(DESTDIR)$(BINDIR)
	install -m 644 $(MODULE) $(DESTDIR)$(LIBEXECDIR)/mod_entra.so
	install -m 644 conf/entra.load conf/entra.conf $(DESTDIR)$(SYSCONFDIR)/mods-available/
	install -m 644 $(LUAMOD) $(DESTDIR)$(LUA_CMOD_DIR)/entra.so
	install -m 755 lua/entra-token $(DESTDIR)$(BINDIR)/entra-token

# libapache2-mod-entra_*.deb in build/deb/: dpkg-buildpackage on a scratch copy of the
# tracked sources with conf/debian/ as its debian/ directory.
DEB_DIR = build/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	git ls-files -z Makefile README.md mod_entra lua conf | tar --null -T - -cf - | tar -xf - -C $(DEB_DIR)/src
	cp -r conf/debian $(DEB_DIR)/src/debian
	cd $(DEB_DIR)/src && dpkg-buildpackage -us -uc -b >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	@ls $(DEB_DIR)/*.deb

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

# Soak run (prints figures; not a test): SOAK_SECONDS of valid, expired, bad-signature,
# unknown-kid and proxied requests at 256 connections, two graceful restarts; its last line is
# "soak: <n> requests, <u> unexpected, rss_growth_kib <k>, fd_growth <f>" (t/bench/soak.py).
SOAK_SECONDS ?= 60
soak: export EXTRA_PKGS = wrk
soak: deps
	@$(MAKE) --no-print-directory module
	@$(PYTHON) t/bench/soak.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

# libFuzzer harnesses (t/fuzz/fuzz_*.c) with ASan and UBSan. The core is built once with
# coverage instrumentation; entra_http_curl.c keeps its URL rules but its request function
# is renamed, so t/fuzz/http_stub.c answers every request and nothing reaches the network.
FUZZ_CC      = clang-14
FUZZ_SECONDS = 60
FUZZ_DIR     = build/fuzz
FUZZ_SAN     = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  = -g -O1 $(FUZZ_SAN) $(WARN) -Imod_entra -Ilua -It/fuzz $(APR_CFLAGS) $(DEP_CFLAGS) \
               $(LUA_CFLAGS)
FUZZ_SRC     = $(wildcard t/fuzz/fuzz_*.c)
FUZZ_BIN     = $(patsubst t/fuzz/%.c,$(FUZZ_DIR)/%,$(FUZZ_SRC))
FUZZ_OBJ     = $(patsubst mod_entra/%.c,$(FUZZ_DIR)/obj/%.o,$(CORE_SRC)) $(FUZZ_DIR)/obj/http_stub.o
FUZZ_LUA_OBJ = $(FUZZ_DIR)/obj/lua_entra.o $(patsubst lua/%.c,$(FUZZ_DIR)/obj/%.o,$(LUAV_SRC))

$(FUZZ_DIR)/obj/%.o: mod_entra/%.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@echo "  FUZZCC $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link \
	  $(if $(filter entra_http_curl,$*),-Dentra_http_request=entra_http_request_unused) -c -o $@ $<

$(FUZZ_DIR)/obj/%.o: lua/%.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@echo "  FUZZCC $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/obj/http_stub.o: t/fuzz/http_stub.c t/fuzz/fuzz.h $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@echo "  FUZZCC $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/fuzz_lua_decode: FUZZ_EXTRA = $(FUZZ_LUA_OBJ) $(LUA_LIBS)
$(FUZZ_DIR)/fuzz_lua_decode: $(FUZZ_LUA_OBJ)

$(FUZZ_DIR)/fuzz_%: t/fuzz/fuzz_%.c t/fuzz/fuzz.h $(FUZZ_OBJ) Makefile
	@echo "  FUZZLD $@"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -DFUZZ_DATA='"$(CURDIR)/t/fuzz"' -o $@ $< \
	  $(FUZZ_OBJ) $(FUZZ_EXTRA) $(APR_LIBS) $(DEP_LIBS) -lpthread

.SECONDARY: $(FUZZ_OBJ) $(FUZZ_LUA_OBJ)

fuzz-build: $(FUZZ_BIN)

# Runs each harness for FUZZ_SECONDS on a copy of its corpus (the repository's seeds are
# never written to); fails when any harness finds a crash, leak or timeout.
fuzz: fuzz-build
	@sh t/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_BIN)

# The clang static analyzer over a clean compile of every module and Lua module source;
# any finding fails (--status-bugs).
SCAN_DIR = build/scan
scan-build:
	@rm -rf $(SCAN_DIR)
	scan-build-14 --status-bugs --use-cc=clang-14 -o $(SCAN_DIR)/report \
	  $(MAKE) --no-print-directory -B scan-objs

scan-objs:
	@mkdir -p $(SCAN_DIR)/obj
	@set -e; for f in $(GLUE_SRC) $(CORE_SRC) $(LUAV_SRC) $(LUAMOD_SRC); do \
	  echo "  SCAN  $$f"; \
	  $(CC) $(HTTPD_CFLAGS) $(WARN) -Wno-null-pointer-subtraction \
	    -Wno-missing-field-initializers $(OPT) -Imod_entra -Ilua \
	    $(APR_CFLAGS) $(DEP_CFLAGS) $(LUA_CFLAGS) -c -o $(SCAN_DIR)/obj/$$(basename $$f .c).o $$f; \
	done

demo-stop:
	@$(PYTHON) t/demo.py stop

clean:
	rm -rf mod_entra/*.o mod_entra/*.lo mod_entra/*.slo mod_entra/*.la mod_entra/.libs build \
	  lua/*.so lua/*.lo lua/*.slo lua/*.o
