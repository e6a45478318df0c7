"""Experts are averaged only when they started from the same weights (issue 27, item 5): expert.json records the
seed's identity (preset + init seed, or the fingerprint of the seed checkpoint's weights), and merging compares it,
not the --seed-model string."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import base_cfg, make_demo_data

from xlbtm.errors import InputError
from xlbtm.formats.consolidated import save_consolidated
from xlbtm.formats.expert import read_expert_info
from xlbtm.formats.hf import save_hf
from xlbtm.formats.seed import load_seed, seed_identity, weights_fingerprint


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from xlbtm.data.binarize import binarize
    from xlbtm.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("seedid")
    data, tok_dir, cdir = make_demo_data(root, n_train=24, n_valid=6)
    binarize(data, root / "bin", load_tokenizer(tok_dir), clusters_dir=cdir, workers=0)
    return root, tok_dir


def _start(demo, run_dir, cluster: int, **over):
    """An expert as the trainer starts it (expert.json written, weights = the seed), saved as consolidated.pt."""
    from xlbtm.launch.distributed import destroy_distributed, init_distributed
    from xlbtm.train.config import TrainConfig
    from xlbtm.train.trainer import Trainer

    root, tok = demo
    cfg = TrainConfig.from_dict(base_cfg(run_dir, root / "bin", cluster=cluster, tokenizer=str(tok), **over))
    init_distributed(device="cpu", init_single=True)
    try:
        t = Trainer(cfg, 0, 1, torch.device("cpu"))
        t.run_dir.mkdir(parents=True)
        t.build_data()
        t.build_model()
        save_consolidated(run_dir / "consolidated.pt", t.model.state_dict(), t.args)
    finally:
        destroy_distributed()
    return read_expert_info(run_dir)


def _merge(*experts_dirs):
    from xlbtm.ensemble.experts import read_expert
    from xlbtm.ensemble.merge import check_mergeable

    check_mergeable([read_expert(d) for d in experts_dirs])


def test_experts_of_one_seed_name_but_two_initializations_do_not_merge(demo, tmp_path, capsys):
    """`debug` drawn with --seed 1 and with --seed 7: both expert.json say seed_model "debug" (the old check
    compared that string and merged them); their identities differ, and merging is refused."""
    a = _start(demo, tmp_path / "ens" / "r.cluster0", 0, seed=1)
    b = _start(demo, tmp_path / "ens" / "r.cluster1", 1, seed=7)
    assert a.seed_model == b.seed_model == "debug"
    assert a.seed_identity == "preset debug, init seed 1" and b.seed_identity == "preset debug, init seed 7"
    with pytest.raises(InputError, match="another initialization"):
        _merge(tmp_path / "ens" / "r.cluster0", tmp_path / "ens" / "r.cluster1")
    from xlbtm.cli import main_wrapper
    from xlbtm.scripts import merge_experts

    out = tmp_path / "merged"
    rc = main_wrapper(
        "merge_experts", merge_experts.main, ["--experts-dir", str(tmp_path / "ens"), "--output-dir", str(out)]
    )
    assert rc == 2 and not out.exists()  # nothing averaged, nothing written

    # the same seed twice merges; an expert.json from before identities only warns
    c = _start(demo, tmp_path / "ens2" / "r.cluster0", 0, seed=1)
    assert c.seed_identity == a.seed_identity
    _merge(tmp_path / "ens" / "r.cluster0", tmp_path / "ens2" / "r.cluster0")

    ej = tmp_path / "ens2" / "r.cluster0" / "expert.json"
    old = json.loads(ej.read_text())
    del old["seed_identity"]
    ej.write_text(json.dumps(old))
    capsys.readouterr()
    _merge(tmp_path / "ens" / "r.cluster0", tmp_path / "ens2" / "r.cluster0")
    assert "records no seed identity" in capsys.readouterr().err


def test_a_seed_checkpoint_is_identified_by_its_weights_not_its_path(demo, tmp_path):
    """One --seed-model path whose HF dir was replaced between two experts: the same string, other weights."""
    from xlbtm.models import build_model, get_preset
    from xlbtm.tokenizer import load_tokenizer

    root, tok = demo
    args = get_preset("debug", vocab_size=load_tokenizer(tok).vocab_size)
    seed = tmp_path / "seed_hf"
    torch.manual_seed(0)
    save_hf(build_model(args), args, seed)
    a = _start(demo, tmp_path / "ens" / "r.cluster0", 0, seed_model=str(seed))
    torch.manual_seed(1)
    save_hf(build_model(args), args, seed)
    b = _start(demo, tmp_path / "ens" / "r.cluster1", 1, seed_model=str(seed))
    assert a.seed_model == b.seed_model and a.seed_identity != b.seed_identity
    assert a.seed_identity.startswith("weights sha256:")
    with pytest.raises(InputError, match="another initialization"):
        _merge(tmp_path / "ens" / "r.cluster0", tmp_path / "ens" / "r.cluster1")
    # the identity is the loaded weights' fingerprint (what a rerun from the same file computes again)
    model, _, _ = load_seed(seed)
    assert (
        seed_identity(str(seed), 5, model.state_dict()) == f"weights sha256:{weights_fingerprint(model.state_dict())}"
    )
    assert b.seed_identity == seed_identity(str(seed), 5, model.state_dict())
