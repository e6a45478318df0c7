"""Shared fixtures. Tests run on CPU; keep each process to one thread so 2-process gloo tests fit 2 cores."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
MANPAGES = Path(os.environ.get("XLBTM_MANPAGES", REPO.parent / "shared" / "corpora" / "manpages"))


@pytest.fixture(scope="session")
def manpages_dir() -> Path:
    """The real 21-language corpus from ../shared; tests using it skip when it is absent."""
    if not (MANPAGES / "train").is_dir():
        pytest.skip(f"manpages corpus not found at {MANPAGES}")
    return MANPAGES


@pytest.fixture(autouse=True)
def _xlbtm_cache(tmp_path_factory, monkeypatch):
    """Keep caches (line indexes etc.) out of the user's home during tests."""
    monkeypatch.setenv("XLBTM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xlbtm-cache"))
