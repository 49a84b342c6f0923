# Shortcuts; the scripts work without `just` too.

# Start the whole stack (embedded metadata) in the foreground.
start:
    bash scripts/quickstart.sh

# The whole test suite, as CI runs it.
test:
    bash scripts/test.sh

# Benchmarks against containerd in the same run (see BENCHMARKS.md).
bench:
    bash e2e/bench/run.sh
