"""The device mesh of one expert's process group: data-parallel shard x tensor-parallel."""

from __future__ import annotations

from dataclasses import dataclass

from xlbtm.errors import UsageError


@dataclass
class ParallelDims:
    dp: int
    tp: int

    @classmethod
    def from_world(cls, world_size: int, tp: int = 1) -> ParallelDims:
        if tp < 1 or world_size % tp:
            raise UsageError(f"--tensor-parallel-size {tp} must divide the number of processes ({world_size})")
        return cls(dp=world_size // tp, tp=tp)

    @property
    def world_size(self) -> int:
        return self.dp * self.tp


def build_mesh(dims: ParallelDims, device_type: str):
    """A 2-D mesh ("dp", "tp"); TP is the inner (fastest) dimension so its ranks share a node."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dims.dp, dims.tp), mesh_dim_names=("dp", "tp"))
