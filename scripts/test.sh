#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace.
# Tests that need ../shared (the reference fixture) skip with a message where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

# pyarrow: the end-to-end test reads the output folder with it as analysts do.
if ! python3 -c "import pyarrow" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pyarrow || echo "warning: pyarrow not installed; its check will be skipped"
fi

# The object storage tests run against a real S3 server on 127.0.0.1 (moto).
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' || echo "warning: moto not installed; the object storage tests will be skipped"
fi

# The Python package's tests (crates/python/tests) run on Ray Data and PySpark (local, loopback).
for module in pytest ray pyspark; do
  if ! python3 -c "import $module" 2>/dev/null; then
    package=$module
    [ "$module" = ray ] && package='ray[data]'
    python3 -m pip install --quiet --disable-pip-version-check "$package" || echo "warning: $package not installed; its tests will be skipped"
  fi
done

# One build for everything below: the test binaries and, with the same features (so nothing is
# compiled twice), the Python extension module target/debug/lib_native.so.
cargo build --workspace --all-targets
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
# The Python package (crates/python), on that extension module.
python3 -m pytest -q -p no:cacheprovider crates/python/tests
# compare.sh's tables: which alternative each mbpipe row is measured against.
python3 -m pytest -q -p no:cacheprovider benches/test_compare_table.py
# Daft pins pyarrow < 26, so its test runs in an environment of its own (target/daft-venv,
# reused while it works); the run above skips it.
daft_python=target/daft-venv/bin/python
if ! "$daft_python" -c "import daft, pytest" 2>/dev/null; then
  rm -rf target/daft-venv
  { python3 -m venv target/daft-venv &&
    "$daft_python" -m pip install --quiet --disable-pip-version-check daft pytest; } ||
    echo "warning: could not set up target/daft-venv; the Daft test is skipped"
fi
if "$daft_python" -c "import daft, pytest" 2>/dev/null; then
  "$daft_python" -m pytest -q -p no:cacheprovider crates/python/tests/test_daft.py
fi
