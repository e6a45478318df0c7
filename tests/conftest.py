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


# --- real SLURM (slurm/local/start.sh) -----------------------------------------------------------------
@pytest.fixture(scope="session")
def _slurm_session():
    from slurm_helpers import REQUIRE_ENV, SlurmCluster, require_slurm, slurm_status

    ok, info = slurm_status()
    if not ok:
        if require_slurm():
            pytest.fail(f"{REQUIRE_ENV}=1 but SLURM is not usable: {info}")
        pytest.skip(info)
    return SlurmCluster(partition=info)


@pytest.fixture
def slurm_cluster(_slurm_session, request):
    """A running SLURM cluster, or skip (FAIL when XLBTM_REQUIRE_SLURM=1, as in CI).

    Also makes the requesting test module's functions picklable by value, so jobs can run
    functions defined in the test file (the job's python does not have tests/ on sys.path).
    Returns a `slurm_helpers.SlurmCluster` (.partition, .state(id), .requeue(id), .release(id)).
    """
    import cloudpickle

    cloudpickle.register_pickle_by_value(request.module)
    return _slurm_session
