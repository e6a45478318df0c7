"""Every launcher (cluster, train_experts, eval_ensemble) takes the same SLURM flags through one code path."""

import importlib

import pytest

from xlbtm.launch.site import site_from_args

SLURM_FLAGS = [
    "--slurm-partition",
    "gpu-x",
    "--slurm-account",
    "acct-y",
    "--slurm-qos",
    "high",
    "--time",
    "90",
    "--mem-gb",
    "32",
    "--cpus-per-task",
    "6",
    "--slurm-extra",
    "mail-type=END",
]

REQUIRED = {
    "cluster": [
        "--data-dir",
        "D",
        "--path-to-clusterer",
        "C",
        "--output-prefix",
        "O",
        "--split",
        "train",
        "--run",
        "slurm",
    ],
    "train_experts": [
        "--run",
        "slurm",
        "--seed-model",
        "debug",
        "--num-clusters",
        "1",
        "--path-to-data",
        "D",
        "--serialization-dir",
        "S",
        "--max-steps",
        "1",
    ],
    "eval_ensemble": ["--data-dir", "D", "--model-paths", "m", "--job-dir", "J", "--run", "slurm"],
}


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_flags_override_env_and_site_file(script, tmp_path, monkeypatch):
    site_file = tmp_path / "site.toml"
    site_file.write_text('partition = "from-file"\naccount = "file-acct"\nconstraint = "h100"\n')
    monkeypatch.setenv("XLBTM_SITE_CONFIG", str(site_file))
    monkeypatch.setenv("XLBTM_SLURM_ACCOUNT", "env-acct")
    parser = importlib.import_module(f"xlbtm.scripts.{script}").build_parser()

    site = site_from_args(parser.parse_args(REQUIRED[script]))
    assert (site.partition, site.account, site.constraint) == ("from-file", "env-acct", "h100")

    site = site_from_args(parser.parse_args(REQUIRED[script] + SLURM_FLAGS))
    assert (site.partition, site.account, site.qos, site.constraint) == ("gpu-x", "acct-y", "high", "h100")
    assert (site.time_min, site.mem_gb, site.cpus_per_task) == (90, 32, 6)
    assert site.sbatch == {"mail-type": "END"}
