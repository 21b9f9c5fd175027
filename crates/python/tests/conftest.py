"""Finds the mbpipe package: installed (pip install ./crates/python), or else assembled from
the extension module that `cargo test --workspace` builds (target/debug/lib_native.so) and the
Python sources, so the tests run without a separate maturin build."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("MBPIPE_SHARED", ROOT.parent / "shared"))


def _assemble():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    built = [p for p in (target / "debug" / "lib_native.so", target / "release" / "lib_native.so")
             if p.exists()]
    if not built:
        return None
    newest = max(built, key=lambda p: p.stat().st_mtime)
    site = Path(tempfile.mkdtemp(prefix="mbpipe-py-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    shutil.copytree(ROOT / "crates/python/python/mbpipe", site / "mbpipe")
    shutil.copy(newest, site / "mbpipe" / "_native.abi3.so")
    return site


try:
    import mbpipe  # noqa: F401
except ImportError:
    site = _assemble()
    if site is None:
        raise RuntimeError("no mbpipe package: pip install ./crates/python, or cargo test --workspace --no-run first")
    sys.path.insert(0, str(site))
    # Worker processes (Ray actors, Spark workers) import it from there too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def fixture_dir():
    d = SHARED / "fixtures" / "modernbert-tiny"
    if not d.exists():
        pytest.skip(f"SKIPPED: the reference fixture {d} is absent")
    return d


@pytest.fixture(scope="session")
def mbpipe_bin():
    for p in (ROOT / "target/debug/mbpipe", ROOT / "target/release/mbpipe"):
        if p.exists():
            return str(p)
    pytest.skip("SKIPPED: no mbpipe binary; cargo build first")
