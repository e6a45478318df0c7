"""Shared fixtures. Tests run on CPU; keep each process to one thread so 2-process gloo tests fit 2 cores."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# torch.compile's kernel cache: this run's own. The machine-wide one (/tmp/torchinductor_<user>) outlives runs,
# and one filled by other runs (concurrent compiles, another ATEN_CPU_CAPABILITY) crashed the compiled worker
# with "free(): invalid pointer" every time, while a fresh cache passed.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="xlbtm-test-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)

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


@pytest.fixture
def slurm_two_nodes(slurm_cluster):
    """`slurm_cluster` with at least two nodes (`start.sh --nodes 2`), or skip; FAIL instead when
    XLBTM_REQUIRE_SLURM_NODES >= 2 (CI). Every node is back up before and after the test."""
    from slurm_helpers import REQUIRE_NODES_ENV, required_nodes

    nodes = slurm_cluster.nodes
    if len(nodes) < 2:
        why = (
            f"needs a SLURM with 2 nodes, partition {slurm_cluster.partition} has {nodes}; "
            "run: sudo bash slurm/local/start.sh --nodes 2"
        )
        if required_nodes() >= 2:
            pytest.fail(f"{REQUIRE_NODES_ENV}={required_nodes()} but {why}")
        pytest.skip(why)
    yield slurm_cluster
    _resume_nodes(slurm_cluster)


def _resume_nodes(cluster) -> None:
    """A test that took a node down must not leave it down for the next one."""
    import subprocess
    import time

    end = time.monotonic() + 60
    while time.monotonic() < end:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-p", cluster.partition, "-o", "%N %T"], capture_output=True, text=True
        ).stdout.split("\n")
        down = [
            ln.split()[0]
            for ln in out
            if ln.strip() and not ln.split()[1].rstrip("*").startswith(("idle", "mixed", "alloc", "completing"))
        ]
        if not down:
            return
        for node in down:
            subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True)
        time.sleep(1)
