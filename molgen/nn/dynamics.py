"""The equivariant field network shared by the point-cloud families.

One module maps a noisy / intermediate molecule ``(x, h)`` at time ``t`` with a condition to an
equivariant vector per atom and an invariant feature vector per atom. Diffusion reads the pair as
the noise ``eps``, the score model as the score, flow matching and the CNF as the velocity.
"""

from __future__ import annotations

from e3nn import o3
from torch import Tensor, nn

from molgen.config import BackboneConfig
from molgen.nn.backbone import EquivariantBackbone, fp32
from molgen.nn.conditioning import ConditionEncoder
from molgen.nn.graph import remove_mean


class DynamicsNetwork(nn.Module):
    """Condition encoder + shared backbone + two small heads.

    Args:
        feat_dim: K, width of the per-atom invariant input features (scaled one-hot types, charges).
        num_properties: P, number of conditioning properties.
        bcfg: backbone configuration.
        zero_mean: project the vector output onto the zero centre-of-mass subspace.
        out_dim: width of the invariant output (default ``feat_dim``; e.g. logits of categorical atoms).

    Shapes: zx ``[N, 3]``, zh ``[N, K]``, t ``[B]`` in [0, 1], y / y_mask ``[B, P]`` ->
    ``([N, 3], [N, out_dim])``; the first output is E(3) equivariant, the second invariant.
    """

    def __init__(self, feat_dim: int, num_properties: int, bcfg: BackboneConfig, zero_mean: bool = True,
                 out_dim: int | None = None) -> None:
        super().__init__()
        self.zero_mean = zero_mean
        self.cond = ConditionEncoder(num_properties, bcfg.cond_dim, use_time=True)
        self.backbone = EquivariantBackbone(feat_dim, bcfg)
        self.head_x = o3.Linear(f"{bcfg.vector_dim}x1o", "1x1o")
        self.head_h = nn.Sequential(nn.Linear(bcfg.scalar_dim, bcfg.scalar_dim), nn.SiLU(),
                                    nn.Linear(bcfg.scalar_dim, out_dim or feat_dim))

    def forward(
        self, zx: Tensor, zh: Tensor, t: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor, y_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        c = self.cond(num_graphs, t, y, y_mask)
        out = self.backbone(zh, zx, batch_index, c, num_graphs=num_graphs)
        vx = fp32(self.head_x, out.vectors.reshape(out.vectors.shape[0], -1))
        if self.zero_mean:
            vx = remove_mean(vx, batch_index, num_graphs)
        return vx, self.head_h(out.scalars).float()
