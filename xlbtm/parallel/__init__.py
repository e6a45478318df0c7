"""Parallelism applied from outside the model (torchtitan style) and sharded checkpoints.

from xlbtm.parallel.mesh import ParallelDims, build_mesh               # ("dp", "tp") device mesh
from xlbtm.parallel.parallelize import parallelize, apply_tp, apply_fsdp, apply_ac, apply_compile
from xlbtm.parallel.parallelize import build_loss_fn                    # the mesh's loss component
from xlbtm.parallel.checkpoint import save_checkpoint, load_checkpoint, read_model_state
(the layout around them, `latest` and train_state.json: xlbtm.formats.checkpoints)
"""
