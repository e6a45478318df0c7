"""Site configuration for SLURM launches: what a user sets once per cluster.

Precedence, lowest to highest, resolved in ONE place (`resolve_site`):
    site file  <  environment variables  <  command-line flags
The site file is TOML (or JSON), found at `--site-config PATH` or `$XLBTM_SITE_CONFIG`
(see slurm/site.example.toml). Environment variables: XLBTM_SLURM_PARTITION, XLBTM_SLURM_ACCOUNT,
XLBTM_SLURM_CONSTRAINT, XLBTM_SLURM_QOS, XLBTM_SLURM_TIME, XLBTM_SLURM_MEM_GB, XLBTM_SLURM_GPUS_PER_NODE,
XLBTM_SLURM_CPUS_PER_TASK.

Every launcher (cluster, train_experts, eval_ensemble) calls `add_slurm_args(parser)` and then
`site_from_args(args)`, and hands the result to `make_executor(..., site=site)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlbtm.errors import InputError, UsageError

SITE_ENV = "XLBTM_SITE_CONFIG"

# field -> (environment variable, command-line flag, argparse dest)
_KNOBS: dict[str, tuple[str, str, str]] = {
    "partition": ("XLBTM_SLURM_PARTITION", "--slurm-partition", "slurm_partition"),
    "account": ("XLBTM_SLURM_ACCOUNT", "--slurm-account", "slurm_account"),
    "constraint": ("XLBTM_SLURM_CONSTRAINT", "--slurm-constraint", "slurm_constraint"),
    "qos": ("XLBTM_SLURM_QOS", "--slurm-qos", "slurm_qos"),
    "time_min": ("XLBTM_SLURM_TIME", "--time", "time"),
    "mem_gb": ("XLBTM_SLURM_MEM_GB", "--mem-gb", "mem_gb"),
    "gpus_per_node": ("XLBTM_SLURM_GPUS_PER_NODE", "--gpus-per-node", "gpus_per_node"),
    "cpus_per_task": ("XLBTM_SLURM_CPUS_PER_TASK", "--cpus-per-task", "cpus_per_task"),
}
# keys accepted in the site file (besides the knobs above); "time" is the user-facing name of time_min
_FILE_KEYS = {
    "partition",
    "account",
    "constraint",
    "qos",
    "time",
    "mem_gb",
    "gpus_per_node",
    "cpus_per_task",
    "sbatch",
    "setup",
    "python",
}


@dataclass
class SiteConfig:
    """Cluster-wide launch settings. None means "not set": the launcher's own default applies."""

    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    qos: str | None = None
    time_min: int | None = None  # wall-clock limit in minutes
    mem_gb: float | None = None  # memory per node
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    sbatch: dict[str, str] = field(default_factory=dict)  # extra `#SBATCH --key=value` lines
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load, ...)
    python: str | None = None  # python command on the compute nodes (default: this interpreter)
    sources: dict[str, str] = field(default_factory=dict)  # field -> where its value came from

    def describe(self) -> str:
        """One line for logs / --dry-run: every value that is set and where it came from."""
        parts = []
        for f in dataclasses.fields(self):
            if f.name == "sources":
                continue
            v = getattr(self, f.name)
            if v is None or v == {} or v == []:
                continue
            src = self.sources.get(f.name)
            parts.append(f"{f.name}={v}" + (f" ({src})" if src else ""))
        return ", ".join(parts) if parts else "(no site settings)"


def parse_time_min(value: Any, what: str = "time") -> int:
    """SLURM time formats -> whole minutes (rounded up): "90", "1:30:00", "2-00:00:00", "2-12", "30:00"."""
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected minutes or [D-]HH:MM:SS, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise UsageError(f"{what}: must be positive, got {value!r}")
        return int(math.ceil(value))
    s = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise UsageError(f"{what}: expected minutes or [D-]HH:MM:SS (SLURM format), got {value!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        secs = int(a) * 60 + int(b)
    else:  # M
        secs = int(a) * 60
    if secs <= 0:
        raise UsageError(f"{what}: must be positive, got {value!r}")
    return int(math.ceil(secs / 60))


def _convert(name: str, value: Any, what: str) -> Any:
    """Validate and type one knob's value; `what` names its source in error messages."""
    if value is None:
        return None
    if name == "time_min":
        return parse_time_min(value, what)
    if name in ("gpus_per_node", "cpus_per_task"):
        try:
            n = int(str(value))
        except ValueError:
            raise UsageError(f"{what}: expected an integer, got {value!r}") from None
        if n < 0 or (name == "cpus_per_task" and n == 0):
            raise UsageError(f"{what}: out of range: {value!r}")
        return n
    if name == "mem_gb":
        try:
            x = float(str(value))
        except ValueError:
            raise UsageError(f"{what}: expected a number of GB, got {value!r}") from None
        if x <= 0:
            raise UsageError(f"{what}: must be positive, got {value!r}")
        return x
    s = str(value).strip()
    return s or None


def load_site_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a site file (TOML or JSON) into {field: value}; unknown keys are an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"site config file not found (set by --site-config or ${SITE_ENV})", path=path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise InputError("TOML site files need Python >= 3.11; use a .json site file", path=path) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"invalid TOML: {e}", path=path) from None
    # Accept both a flat file and one with a [slurm] table.
    if isinstance(data.get("slurm"), dict):
        data = data["slurm"]
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}; known keys: {sorted(_FILE_KEYS)}", path=path)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = "time_min" if key == "time" else key
        if name == "sbatch":
            if not isinstance(value, dict):
                raise InputError("'sbatch' must be a table of option = value", path=path)
            out["sbatch"] = {str(k).lstrip("-"): ("" if v is True else str(v)) for k, v in value.items()}
        elif name == "setup":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise InputError("'setup' must be a list of shell lines", path=path)
            out["setup"] = list(value)
        elif name == "python":
            out["python"] = str(value)
        else:
            try:
                out[name] = _convert(name, value, key)
            except UsageError as e:
                raise InputError(str(e), path=path) from None
    return out


def resolve_site(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None, path: str | os.PathLike | None = None
) -> SiteConfig:
    """THE code path: site file < environment < flags. `flags` maps field names to values (None = unset)."""
    env = os.environ if env is None else env
    flags = dict(flags or {})
    cfg = SiteConfig()
    path = path or env.get(SITE_ENV) or None
    if path:
        for name, value in load_site_file(path).items():
            setattr(cfg, name, value)
            cfg.sources[name] = f"site file {path}"
    for name, (var, _flag, _dest) in _KNOBS.items():
        raw = env.get(var)
        if raw not in (None, ""):
            setattr(cfg, name, _convert(name, raw, f"${var}"))
            cfg.sources[name] = f"${var}"
    for name, (_var, flag, _dest) in _KNOBS.items():
        if flags.get(name) is not None:
            setattr(cfg, name, _convert(name, flags[name], flag))
            cfg.sources[name] = flag
    for kv in flags.get("sbatch") or []:
        if "=" not in kv:
            raise UsageError(f"--slurm-extra: expected KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        cfg.sbatch[k.strip().lstrip("-")] = v
        cfg.sources["sbatch"] = "--slurm-extra"
    return cfg


def add_slurm_args(parser: argparse.ArgumentParser, *, gpus_per_node: bool = False) -> argparse.ArgumentParser:
    """Add the shared SLURM flags (all default to None = "not given", so the site file / env can fill them)."""
    g = parser.add_argument_group("SLURM (used with --run slurm; flags override $XLBTM_SLURM_* and the site file)")
    g.add_argument(
        "--site-config",
        default=None,
        metavar="PATH",
        help=f"site file (TOML/JSON, see slurm/site.example.toml); default ${SITE_ENV}",
    )
    g.add_argument("--slurm-partition", default=None, help="partition to submit to")
    g.add_argument("--slurm-account", default=None, help="account to charge")
    g.add_argument("--slurm-constraint", default=None, help="node feature constraint, e.g. volta32gb")
    g.add_argument("--slurm-qos", default=None, help="quality of service")
    g.add_argument("--time", default=None, metavar="TIME", help="wall-clock limit per job: minutes or [D-]HH:MM:SS")
    g.add_argument("--mem-gb", default=None, type=float, help="memory per node in GB")
    g.add_argument("--cpus-per-task", default=None, type=int, help="CPUs per task")
    if gpus_per_node:
        g.add_argument("--gpus-per-node", default=None, type=int, help="GPUs per node")
    g.add_argument(
        "--slurm-extra",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra sbatch option (repeatable), e.g. --slurm-extra mail-type=END",
    )
    return parser


def site_from_args(args: argparse.Namespace) -> SiteConfig:
    """Resolve the site config from parsed flags (added by `add_slurm_args`) + environment + site file."""
    flags = {name: getattr(args, dest, None) for name, (_v, _f, dest) in _KNOBS.items()}
    flags["sbatch"] = getattr(args, "slurm_extra", None)
    return resolve_site(flags, path=getattr(args, "site_config", None))
