# rbuild: `make` builds the static binary, `make example` runs a real build with it,
# `make test` installs what the tests need and runs them all, `make bench` measures.

CARGO  ?= cargo
TARGET ?= x86_64-unknown-linux-gnu
# glibc linked statically, not position independent: `file` says "statically linked".
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static
BIN    := target/rbuild

.PHONY: all build base example test bench lint man clean

all: build

build:
	RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release --locked --target $(TARGET)
	cp target/$(TARGET)/release/rbuild $(BIN)
	@file $(BIN) | grep -q 'statically linked' || { file $(BIN); echo "error: $(BIN) is not static" >&2; exit 1; }
	@echo "built $(BIN)"

# The busybox base image the tests and the example build on (testdata/generated/).
base: build
	scripts/make-busybox-base.sh

example: build base
	scripts/example.sh

test:
	scripts/test.sh

bench: build base
	scripts/bench.sh

# Man pages (rbuild.1, rbuild-build.1, ...) from the same definitions as --help.
man: build
	$(BIN) help --man target/man
	@echo "man pages in target/man (man -l target/man/rbuild.1)"

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
	rm -rf testdata/generated _work
