"""Set up torch.distributed the same way under submitit (SLURM or local), torchrun, plain srun, or alone.

    info = init_distributed()          # DistInfo(rank, world_size, local_rank, device, backend)
    ...
    destroy_distributed()

Where the rank comes from, in order:
  1. a process group that already exists;
  2. torchrun-style env vars (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; LOCAL_RANK);
  3. a submitit job (SUBMITIT_EXECUTOR=slurm|local): `submitit.helpers.TorchDistributedEnvironment`;
  4. a plain `srun` step (SLURM_PROCID / SLURM_NTASKS), e.g. from the sbatch templates in slurm/sbatch/;
  5. otherwise one process (no process group unless `init_single=True`).
NCCL when the device is a GPU, gloo on CPU (override with `backend=` or $XLBTM_DIST_BACKEND).

Across nodes, MASTER_ADDR is the first node's address through the cluster's own mapping (`resolve_node_addr`:
the name if it resolves to a non-loopback address, else slurmctld's NodeAddr), the port is derived from the
job id (every task computes the same one), LOCAL_RANK / LOCAL_WORLD_SIZE are per node, and gloo binds the
interface that routes to MASTER_ADDR unless $GLOO_SOCKET_IFNAME says otherwise.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
from dataclasses import dataclass
from typing import Any, cast

from xlbtm.cli import get_logger
from xlbtm.runtime import resolve_device

log = get_logger("launch")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    backend: str | None  # None: no process group
    local_world_size: int = 1
    source: str = "single"  # which environment gave the ranks (torchrun|submitit|srun|single|existing)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _port_for(job_id: str) -> int:
    # Same idea as submitit: every task of a job derives the same port from the job id, with no
    # communication; different jobs (and array elements) get different ports. Below Linux's ephemeral range
    # (32768-60999): a port in it can already be taken by any outgoing socket, srun's own listeners included
    # (seen: rank 0's store failed with EADDRINUSE against srun, and rank 1 waited out the store timeout).
    return random.Random(f"xlbtm-{job_id}").randint(20000, 32767)


def _single_node_addr(hostnames: list[str]) -> str:
    # On one node, always talk over loopback: the machine's hostname may not resolve (containers, CI).
    return "127.0.0.1" if len(set(hostnames)) <= 1 else hostnames[0]


def parse_node_list(nodelist: str) -> list[str]:
    """SLURM's compact node list ("node[1-2]", "gpu[01-03,07],cpu5") as host names, in SLURM's order."""
    from submitit.slurm.slurm import _parse_node_list

    return _parse_node_list(nodelist) if nodelist else []


def parse_tasks_per_node(spec: str) -> list[int]:
    """$SLURM_TASKS_PER_NODE ("2(x3),1") as one count per node: [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        n, _, rep = part.partition("(x")
        counts += [int(n)] * (int(rep.rstrip(")")) if rep else 1)
    return counts


def _resolves_to(name: str) -> str | None:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        return None
    return cast(str, infos[0][4][0]) if infos else None  # AF_INET: sockaddr is (host: str, port)


def _scontrol_node_addr(name: str) -> str | None:
    """NodeAddr of a node as slurmctld knows it (`scontrol show node NAME -o`), None when not available."""
    import subprocess

    try:
        out = subprocess.run(
            ["scontrol", "show", "node", name, "-o"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for field in out.split():
        if field.startswith("NodeAddr="):
            return field[len("NodeAddr=") :] or None
    return None


def resolve_node_addr(name: str) -> str:
    """An address of node `name` that every node of the job can connect to (the rendezvous' MASTER_ADDR).

    A SLURM node name need not resolve anywhere (the cluster maps it with NodeAddr=), and a name that
    resolves to loopback (a machine's own name in its /etc/hosts) is useless to the other nodes. So: the
    name when it resolves to a non-loopback address (cheap, no controller call); else slurmctld's NodeAddr
    for it; else the name itself, with a warning (rendezvous will say if it cannot connect).
    """
    addr = _resolves_to(name)
    if addr is not None and not addr.startswith("127."):
        return name
    node_addr = _scontrol_node_addr(name)
    if node_addr and node_addr != name:
        log.debug("node %s: NodeAddr %s (from scontrol)", name, node_addr)
        return node_addr
    log.warning(
        "node %s resolves to %s and slurmctld gives no other NodeAddr: using the name as MASTER_ADDR",
        name,
        addr or "nothing",
    )
    return name


def _local_addr_towards(addr: str) -> str | None:
    """This process's source address for packets to `addr` (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def _interface_with(ip: str) -> str | None:
    """The network interface holding IPv4 address `ip` (Linux: SIOCGIFADDR per interface)."""
    import fcntl
    import struct

    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
        if socket.inet_ntoa(raw[20:24]) == ip:
            return name
    return None


def _gloo_interface(master_addr: str) -> str | None:
    """The interface gloo must use to reach the other nodes: the one that routes to MASTER_ADDR.

    By default gloo binds the address this machine's hostname resolves to, and falls back to loopback: a
    hostname mapped to 127.0.0.1 (containers, CI, nodes that share a host's /etc/hosts) then makes every
    rank advertise an address the other nodes cannot reach, and the first collective hangs.
    """
    addr = _resolves_to(master_addr)
    if addr is None or addr.startswith("127."):
        return None
    local = _local_addr_towards(addr)
    if local is None or local.startswith("127."):
        return None
    try:
        return _interface_with(local)
    except (OSError, ImportError):  # not Linux
        return None


def _env_from_submitit() -> dict[str, str] | None:
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return None
    try:
        from submitit.helpers import TorchDistributedEnvironment

        tde = TorchDistributedEnvironment()
    except Exception as e:  # noqa: BLE001 - not in a submitit job after all
        log.debug("not a submitit job environment: %s", e)
        return None
    job_id = tde._job_env.job_id
    nodes = list(tde._job_env.hostnames)
    return {
        "RANK": str(tde.rank),
        "WORLD_SIZE": str(tde.world_size),
        "LOCAL_RANK": str(tde.local_rank),
        "LOCAL_WORLD_SIZE": str(tde.local_world_size),
        # submitit's master_addr is the first node's *name*, which may resolve nowhere (or to loopback)
        "MASTER_ADDR": _single_node_addr(nodes) if tde._job_env.num_nodes == 1 else resolve_node_addr(nodes[0]),
        "MASTER_PORT": str(_port_for(job_id)),
    }


def _env_from_srun() -> dict[str, str] | None:
    if "SLURM_PROCID" not in os.environ or "SLURM_STEP_ID" not in os.environ:
        return None
    ntasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))
    nnodes = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
    nodelist = os.environ.get("SLURM_STEP_NODELIST", os.environ.get("SLURM_JOB_NODELIST", ""))
    try:
        hosts = parse_node_list(nodelist) or [socket.gethostname()]
    except Exception:  # noqa: BLE001
        hosts = [socket.gethostname()]
    job_id = os.environ.get("SLURM_JOB_ID", "0") + "." + os.environ.get("SLURM_STEP_ID", "0")
    return {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(_local_world_size(ntasks, nnodes)),
        "MASTER_ADDR": _single_node_addr(hosts) if nnodes == 1 else resolve_node_addr(hosts[0]),
        "MASTER_PORT": os.environ.get("XLBTM_MASTER_PORT") or str(_port_for(job_id)),
    }


def _local_world_size(ntasks: int, nnodes: int) -> int:
    """Tasks on this node: uneven steps ("3,1") differ per node, so read this node's entry."""
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE", os.environ.get("SLURM_TASKS_PER_NODE", ""))
    try:
        counts = parse_tasks_per_node(spec)
        return counts[int(os.environ.get("SLURM_NODEID", "0"))]
    except (ValueError, IndexError):
        return max(1, ntasks // max(1, nnodes))


def _pick_device(local_rank: int, device: str | None):
    """This rank's torch device (`xlbtm.runtime.resolve_device`: `device` > $XLBTM_DEVICE > cuda when
    visible > cpu); plain "cuda" is the GPU of the local rank."""
    import torch

    kind = resolve_device(device)
    if kind == "cuda":
        d = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(d)
        return d
    if kind.startswith("cuda:"):
        torch.cuda.set_device(torch.device(kind))
    return torch.device(kind)


def init_distributed(
    backend: str | None = None, *, device: str | None = None, timeout_s: float | None = None, init_single: bool = False
) -> DistInfo:
    """Find this process's rank, pick its device, and join the process group. Idempotent.

    `device`: "cuda" | "cpu" (default: $XLBTM_DEVICE, else cuda when a GPU is visible). `init_single=True`
    also creates a 1-process group when running alone (DeviceMesh/FSDP need one). `timeout_s` bounds collectives
    (default $XLBTM_DIST_TIMEOUT_S or 1800 s).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistInfo(
            rank,
            world,
            local,
            _pick_device(local, device),
            dist.get_backend(),
            int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            "existing",
        )

    source, env = "single", None
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        source = "torchrun"
        env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env["LOCAL_RANK"] = os.environ.get("LOCAL_RANK", "0")
        env["LOCAL_WORLD_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    if env is None or os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        # A submitit job inherits the submitter's environment, so stale RANK/MASTER_* from a parent
        # torchrun must not win over the job's own ranks.
        sub = _env_from_submitit()
        if sub is not None:
            source, env = "submitit", sub
    if env is None:
        sr = _env_from_srun()
        if sr is not None:
            source, env = "srun", sr

    if env is None:
        env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    os.environ.update(env)
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    dev = _pick_device(local, device)
    be = backend or os.environ.get("XLBTM_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")

    if world == 1 and not init_single:
        return DistInfo(0, 1, 0, dev, None, 1, source)
    timeout = datetime.timedelta(seconds=float(timeout_s or os.environ.get("XLBTM_DIST_TIMEOUT_S", "1800")))
    if world == 1:
        store = dist.HashStore()
        dist.init_process_group(be, store=store, rank=0, world_size=1, timeout=timeout)
    else:
        log.debug(
            "init_process_group(%s) rank %d/%d via %s:%s (%s)",
            be,
            rank,
            world,
            env.get("MASTER_ADDR"),
            env.get("MASTER_PORT"),
            source,
        )
        kwargs: dict[str, Any] = {}
        if be == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
            ifname = _gloo_interface(env.get("MASTER_ADDR", "127.0.0.1"))
            if ifname is not None:
                os.environ["GLOO_SOCKET_IFNAME"] = ifname
                log.debug("gloo over %s (the interface towards MASTER_ADDR)", ifname)
        if be == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(be, init_method="env://", rank=rank, world_size=world, timeout=timeout, **kwargs)
    return DistInfo(rank, world, local, dev, be, local_world, source)


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
