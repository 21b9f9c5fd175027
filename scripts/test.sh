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

cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
