# drain-agent — see README.md. Everything here runs as root on a Debian machine (the lab creates
# network namespaces); nothing touches the root namespace's links, routes, firewall or sysctls.
CARGO ?= cargo
RELEASE := target/release
# Test builds carry the fault-injection points (src/faults.rs) that tests/crash_e2e.rs kills the
# agent at; `build` and `deb` never do. The same features for `cargo build` and `cargo test`, so
# the test run reuses the build instead of compiling the workspace a second time.
TEST_FEATURES := --features drain-agent/fault-injection

.PHONY: all deps build deb demo test test-unit golden fuzz lint bench clean-lab crash

all: build

deps:
	@bash tests/deps.sh

build:
	$(CARGO) build --release --workspace --bins

## Debian package: target/debian/drain-agent_<version>_<arch>.deb (binary, systemd unit, conffile,
## examples, man pages, completions), staged by packaging/deb/build.sh and built with dpkg-deb.
## tests/deb_install.rs installs, checks and purges it.
deb:
	$(CARGO) build --release -p drain-agent --bin drain-agent
	@! grep -q "fault-injection: killed at" $(RELEASE)/drain-agent || { echo "$(RELEASE)/drain-agent has fault injection compiled in: refusing to package it" >&2; exit 1; }
	bash packaging/deb/build.sh $(RELEASE)/drain-agent target/debian

## Live demo: brings the lab up once per scenario, runs the mixed load through each way of taking lb1
## out of service, prints the comparison table, tears everything down.
demo: deps build
	$(RELEASE)/drain-lab demo

## Unit tests, kernel tests in scratch namespaces, and the end-to-end lab tests (real keepalived,
## HAProxy, iptables, ipset). Lab tests run one at a time: they share the 2 cores with the load.
## The tests that need root are #[ignore]d, so a plain `cargo test` without root lists them as
## ignored rather than passed; this target includes them (and, under CI=true, fails any that
## cannot run).
test: deps
	$(CARGO) build --release --workspace --bins $(TEST_FEATURES)
	$(CARGO) test --release --workspace $(TEST_FEATURES) --no-fail-fast -- --test-threads=1 --include-ignored

test-unit:
	$(CARGO) test --workspace --lib --bins

## Rewrites tests/golden/ from the planner's current output (the only way they change; refused
## under CI=true), then shows what changed: review the diff before committing it.
golden:
	UPDATE_GOLDEN=1 $(CARGO) test --release -p drain-agent --lib plan::tests::golden
	git diff --stat -- tests/golden

## Property tests of every parser of outside input (tests/parsers_prop.rs and the sock_diag reply
## parser's own, in src/sys/sockdiag/wire/tests.rs), a million cases each
## (the normal suite runs 256); prints each parser's count and time. FUZZ_CASES overrides.
FUZZ_CASES ?= 1000000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p drain-agent --test parsers_prop -- --nocapture --test-threads=1
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p drain-agent --lib sockdiag::wire::tests::prop -- --test-threads=1

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --no-deps -p drain-agent

## Benchmarks (root; ~35 min): the divert, sock_diag and drain-done benches, then the drain at
## 500, 1500, 3000/s and the highest steady rate, 10 runs each. Everything lands in target/bench:
## report.md (tables), bench.json (every run), drain-timeline.svg and drain-rates.svg.
BENCH_OUT ?= target/bench
bench: deps build
	mkdir -p $(BENCH_OUT)
	$(CARGO) bench --bench divert | tee $(BENCH_OUT)/divert.txt
	$(CARGO) bench --bench sockdiag | tee $(BENCH_OUT)/sockdiag.txt
	$(CARGO) bench --bench drain_done | tee $(BENCH_OUT)/drain_done.txt
	$(RELEASE)/drain-lab bench --out $(BENCH_OUT)

## Soak (root; ~11 min): SOAK_CYCLES cycles of drain lb1, undrain lb1, drain lb2, undrain lb2
## through the daemons under one continuous mixed load (tests/soak_e2e.rs, 3 cycles in the normal
## suite): zero broken flows, both daemons' RSS, descriptors and threads flat, both hosts as they
## began. Prints the figures and writes $(SOAK_OUT)/soak.json.
.PHONY: soak
SOAK_CYCLES ?= 100
SOAK_OUT ?= target/soak
soak: deps build
	mkdir -p $(SOAK_OUT)
	SOAK_CYCLES=$(SOAK_CYCLES) SOAK_OUT=$(SOAK_OUT) $(CARGO) test --release -p drain-agent --test soak_e2e -- --nocapture --test-threads=1 --include-ignored

## Removes namespaces, processes and state left by a killed lab run.
clean-lab:
	@$(CARGO) build --release -q -p drain-lab && $(RELEASE)/drain-lab cleanup --all

## The agent SIGKILLed at every fault-injection point of drain, undrain, accept/release,
## maintenance, the hand-off and the daemon, under load, each step CRASH_REPEAT times (the normal
## suite runs each once); prints the table steps x outcome. CRASH_STEPS=point,... runs only those.
CRASH_REPEAT ?= 3
crash: deps
	$(CARGO) build --release --workspace --bins $(TEST_FEATURES)
	CRASH_REPEAT=$(CRASH_REPEAT) $(CARGO) test --release -p drain-agent $(TEST_FEATURES) --test crash_e2e -- --nocapture --test-threads=1 --include-ignored
