"""Hermes-R at CPU size: a 3-D ResUNet with task and modality context priors (../shared/METHODS.md §7a-c),
and the "multi-head" baseline on the same backbone.

Hermes-R (`HermesR`)::

    (image (B, 1, D, H, W), tasks (B, T) int64, modality (B,) int64)
        → (task logits (B, T, D, H, W), modality logits (B, NUM_MODALITIES))
    (2, 1, 64, 64, 64), (2, 3), (2,) → (2, 3, 64, 64, 64), (2, 2)

* backbone: ResUNet, residual BasicBlocks (conv3-IN-LeakyReLU-conv3-IN + shortcut), four stride-2
  down-samplings, channels ``CPU_CONFIG.channels`` = (16, 32, 48, 64, 80) at 1, 1/2, 1/4, 1/8, 1/16
  (paper: 32, 64, 128, 256, 320); decoder: trilinear ×2 up-sampling, concatenation with the skip,
  BasicBlock;
* prior fusion (`PriorFusion`) after down2 (1/4), down3 (1/8), down4 (1/16), up1 (1/8) and up2 (1/4),
  with ``CPU_CONFIG.fusion_blocks`` = (1, 1, 2, 1, 1) attention blocks (paper: 2, 2, 4, 2, 2). Every
  fusion layer owns its prior tables: task tokens ``(NUM_TASKS + 1, C)`` (the last is the null token
  that pads task lists) and modality tokens ``(NUM_MODALITIES + 1, K, C)`` with K = 4 tokens per
  modality (paper 10); the last modality row is "unknown" (index -1). Priors attend to the image
  features, then the features attend to the priors (pre-LN cross-attention + MLP, head dim 16);
* segmentation head (`PriorClassifier`): the task-token outputs of the five fusion layers,
  concatenated (48+64+80+64+48 = 304 channels), LayerNorm, two MLPs → per-task weights (16) and a
  bias: a per-task dynamic 1×1×1 convolution of the full-resolution 16-channel feature map (batched
  matmul). Sigmoid per task (multi-label). The bias is an addition to the paper's head, and so is
  ``task_kernels`` (on in ``CPU_CONFIG``): a learnt static kernel per task added to the dynamic one;
* modality head: the modality-token outputs of the fusion layers, concatenated, LayerNorm, mean over
  tokens, MLP → NUM_MODALITIES logits.

Task lists are gathered per sample with one batched ``index_select`` on the flattened ``(B·T)`` index
(an index of -1 selects the null token), so the network exports to ONNX with T as a dynamic axis.

Sizes (``python -m services.hermes.sizes``, docs/hermes.md): Hermes-R ``CPU_CONFIG`` 1,867,108 parameters
(1,866,819 without task kernels); the multi-head baseline on the same backbone 1,324,576. Patch: 64³ voxels
on the 3 mm grid (192 mm cube; sides must be multiples of 16).

Features attend to *all* prior tokens of the request, so a task's mask depends (slightly) on which
other tasks, and how many null tokens, are requested with it; upstream always pads to a fixed count.

    net = HermesR()
    seg, mod = net(torch.zeros(1, 1, 64, 64, 64), torch.tensor([[0, 1]]), torch.tensor([0]))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from services.hermes.tasks import NUM_MODALITIES, NUM_TASKS

__all__ = ["HermesConfig", "CPU_CONFIG", "HermesR", "MultiHeadUNet", "ResUNet", "PriorFusion", "PriorClassifier",
           "count_parameters", "gather_tokens", "select_tasks"]


@dataclass(frozen=True)
class HermesConfig:
    in_channels: int = 1
    num_tasks: int = NUM_TASKS
    num_modalities: int = NUM_MODALITIES
    channels: tuple[int, int, int, int, int] = (16, 32, 48, 64, 80)
    #: attention blocks of the fusion layers after down2, down3, down4, up1, up2
    fusion_blocks: tuple[int, int, int, int, int] = (1, 1, 2, 1, 1)
    tokens_per_modality: int = 4
    head_dim: int = 16  # attention head width (heads = C // head_dim)
    mlp_ratio: int = 2
    #: add a learnt static kernel per task (a table row) to the classifier's dynamic one; False is upstream's head
    task_kernels: bool = False
    #: initialisation only (needs task_kernels): the fusion blocks' feature updates and the head's dynamic kernel
    #: start at zero and the static kernels as the multi-head's 1×1×1 conv, so training starts from the
    #: multi-head network and the priors add to it; False is upstream's initialisation
    start_as_multihead: bool = False
    #: each task's kernel weights (dynamic + static) scaled to unit norm times a learnt per-task gain, exp(log-gain)
    #: with the log-gain at 0 at the start: the kernel's norm grows only through its gain (docs/hermes.md)
    normalised_kernels: bool = False
    #: the kernel's bias is the static kernel's alone (needs task_kernels): the generator makes the weights only,
    #: so a task's logit offset cannot move with the image (docs/hermes.md, "Sixth look")
    static_bias: bool = False
    #: one task decoded through its own copy of the last ``private_stages`` decoder stages (1: the full-resolution
    #: stage; 2: the last two, the ones without prior fusion), every other task through the shared ones: how a new
    #: task's tuned stages join the model without changing the other tasks (private_stage.py); -1 / 0: none
    private_task: int = -1
    private_stages: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HermesConfig:
        d = dict(d)
        for key in ("channels", "fusion_blocks"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# task_kernels: without them the first 2,000-iteration run (hermes_s0) gave spleen, both kidneys, stomach and
# pancreas one shared dynamic kernel (cosine 0.97-1.00) and both lungs another: the table rows (norm ~0.3)
# drown in the attention updates (token norm ~25), so task identity was lost (docs/hermes.md)
CPU_CONFIG = HermesConfig(task_kernels=True)


def _validate(config: HermesConfig) -> None:
    if config.in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {config.in_channels}")
    if config.num_tasks < 1 or config.num_modalities < 1:
        raise ValueError(f"num_tasks and num_modalities must be >= 1, got {config.num_tasks}, {config.num_modalities}")
    if len(config.channels) != 5 or min(config.channels) < 1:
        raise ValueError(f"channels needs 5 positive widths (1, 1/2, 1/4, 1/8, 1/16), got {config.channels}")
    if len(config.fusion_blocks) != 5 or min(config.fusion_blocks) < 1:
        raise ValueError(f"fusion_blocks needs 5 positive counts, got {config.fusion_blocks}")
    if config.start_as_multihead and not config.task_kernels:
        raise ValueError("start_as_multihead starts the head from the static task kernels: it needs task_kernels=True")
    if config.normalised_kernels and not config.task_kernels:
        raise ValueError("normalised_kernels keeps its per-task gains beside the static kernels: it needs task_kernels")
    if config.static_bias and not config.task_kernels:
        raise ValueError("static_bias takes each task's bias from the static kernels: it needs task_kernels")
    if config.private_stages not in (0, 1, 2) or (config.private_stages > 0) != (0 <= config.private_task
                                                                                   < config.num_tasks):
        raise ValueError(f"private_stages must be 0, 1 or 2 with private_task a task index (0..{config.num_tasks - 1}) "
                         f"when > 0, got {config.private_stages} stages for task {config.private_task}")
    fused = config.channels[2:] + config.channels[3:1:-1]
    if any(c % config.head_dim for c in fused):
        raise ValueError(f"fusion widths {fused} must be multiples of head_dim={config.head_dim}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_input(image: torch.Tensor) -> None:
    # skipped while tracing: export sees one fixed example and must not bake Python checks into the graph
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    if image.dim() != 5 or any(s % 16 for s in image.shape[2:]):
        raise ValueError(f"image must be (N, C, D, H, W) with D, H, W multiples of 16, got {tuple(image.shape)}")


# -- backbone ---------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3-IN-LeakyReLU-conv3-IN plus a (strided 1×1×1 where needed) shortcut, then LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(out_channels, affine=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.InstanceNorm3d(out_channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + self.shortcut(x), 0.01)


class UpBlock(nn.Module):
    """×2 trilinear up-sampling, 1×1×1 projection, concatenation with the skip, BasicBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv3d(in_channels, skip_channels, 1, bias=False)
        self.block = BasicBlock(2 * skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.project(x), scale_factor=2.0, mode="trilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class ResUNet(nn.Module):
    """The shared backbone; `HermesR` and `MultiHeadUNet` run its stages themselves so Hermes can fuse
    priors between them. Decoder widths mirror the encoder: up1 → c3, up2 → c2, up3 → c1, up4 → c0."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = channels
        self.stem = nn.Sequential(nn.Conv3d(in_channels, c0, 3, padding=1, bias=False),
                                  nn.InstanceNorm3d(c0, affine=True), nn.LeakyReLU(0.01), BasicBlock(c0, c0))
        self.downs = nn.ModuleList([BasicBlock(a, b, stride=2) for a, b in ((c0, c1), (c1, c2), (c2, c3), (c3, c4))])
        self.ups = nn.ModuleList([UpBlock(c4, c3, c3), UpBlock(c3, c2, c2), UpBlock(c2, c1, c1), UpBlock(c1, c0, c0)])


# -- priors -----------------------------------------------------------------------------------------


def gather_tokens(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` (R, *E) for a (B, T) index, as one batched ``index_select`` → (B, T, *E).

    Negative indices select the last row (the null task token / the unknown modality), as in the
    upstream code. Written without a per-sample loop so T stays a dynamic ONNX axis."""
    rows = table.shape[0]
    flat = index.reshape(-1)
    flat = torch.where(flat < 0, flat + rows, flat)
    picked = table.index_select(0, flat)
    return picked.reshape(index.shape + table.shape[1:])


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Nq, C) over keys/values (B, Nk, C), written with matmuls."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = queries.shape[0]
        q = self.q(queries).reshape(b, -1, self.heads, self.head_dim).transpose(1, 2)
        kv = self.kv(context).reshape(b, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, -1, self.heads * self.head_dim))


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class PriorAttentionBlock(nn.Module):
    """priors ← priors + CA(LN p → LN f), + MLP; features ← features + CA(LN f → LN p), + MLP."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.p_norm_q, self.p_norm_kv, self.p_attn = nn.LayerNorm(dim), nn.LayerNorm(dim), CrossAttention(dim, head_dim)
        self.p_norm_mlp, self.p_mlp = nn.LayerNorm(dim), _MLP(dim, dim * mlp_ratio)
        self.f_norm_q, self.f_norm_kv, self.f_attn = nn.LayerNorm(dim), nn.LayerNorm(dim), CrossAttention(dim, head_dim)
        self.f_norm_mlp, self.f_mlp = nn.LayerNorm(dim), _MLP(dim, dim * mlp_ratio)

    def forward(self, priors: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        priors = priors + self.p_attn(self.p_norm_q(priors), self.p_norm_kv(features))
        priors = priors + self.p_mlp(self.p_norm_mlp(priors))
        features = features + self.f_attn(self.f_norm_q(features), self.f_norm_kv(priors))
        features = features + self.f_mlp(self.f_norm_mlp(features))
        return priors, features


class PriorFusion(nn.Module):
    """One fusion layer with its own task table (num_tasks + 1 null, C) and modality table
    (num_modalities + 1 unknown, K, C).

    (features (B, C, D, H, W), tasks (B, T), modality (B,)) → (features, task tokens (B, T, C),
    modality tokens (B, K, C))."""

    def __init__(self, dim: int, num_tasks: int, num_modalities: int, tokens_per_modality: int, blocks: int,
                 head_dim: int, mlp_ratio: int) -> None:
        super().__init__()
        # Xavier-uniform, as upstream (hermes_unet_utils.PriorInitFusionLayer)
        self.task_table = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_tasks + 1, dim)))
        self.modality_table = nn.Parameter(nn.init.xavier_uniform_(
            torch.empty(num_modalities + 1, tokens_per_modality, dim)))
        self.blocks = nn.ModuleList([PriorAttentionBlock(dim, head_dim, mlp_ratio) for _ in range(blocks)])

    def forward(self, features: torch.Tensor, tasks: torch.Tensor,
                modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c = features.shape[:2]
        spatial = features.shape[2:]
        task_tokens = gather_tokens(self.task_table, tasks)  # (B, T, C)
        mod_tokens = gather_tokens(self.modality_table, modality.reshape(-1, 1))  # (B, 1, K, C)
        mod_tokens = mod_tokens.reshape(b, -1, c)
        priors = torch.cat([task_tokens, mod_tokens], dim=1)
        tokens = features.flatten(2).transpose(1, 2)  # (B, DHW, C)
        for block in self.blocks:
            priors, tokens = block(priors, tokens)
        features = tokens.transpose(1, 2).reshape(b, c, *spatial)
        t = tasks.shape[1]
        return features, priors[:, :t], priors[:, t:]


class PriorClassifier(nn.Module):
    """Task tokens of all fusion layers (B, T, ΣC) → per-task weights and bias (B, T, F + 1), applied to
    the final feature map (B, F, D, H, W) as a dynamic 1×1×1 convolution → (B, T, D, H, W).

    With ``num_tasks`` set, a static kernel per task (rows of ``task_kernels``, zero at the start, the
    last row for the null token) is added to the dynamic one, selected by the (B, T) task index. With
    ``normalised`` (needs ``num_tasks``) the weights are scaled to unit norm times exp(``kernel_log_gains`` row).
    With ``static_bias`` (needs ``num_tasks``) the MLP generates the weights only and the bias is the static one."""

    def __init__(self, token_dim: int, feature_dim: int, num_tasks: int | None = None,
                 normalised: bool = False, static_bias: bool = False) -> None:
        super().__init__()
        if static_bias and num_tasks is None:
            raise ValueError("a static bias is a row of the task kernels: it needs num_tasks")
        self.static_bias = static_bias
        self.norm = nn.LayerNorm(token_dim)
        self.mlp1 = _MLP(token_dim, token_dim, feature_dim)
        self.mlp2 = _MLP(feature_dim, feature_dim, feature_dim if static_bias else feature_dim + 1)
        self.task_kernels = None if num_tasks is None else nn.Parameter(torch.zeros(num_tasks + 1, feature_dim + 1))
        self.kernel_log_gains = None
        if normalised:
            if num_tasks is None:
                raise ValueError("normalised kernels keep one gain per task: they need num_tasks")
            self.kernel_log_gains = nn.Parameter(torch.zeros(num_tasks + 1, 1))

    def kernels(self, tokens: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Per-task weights and bias (B, T, F + 1) for the task tokens (B, T, ΣC) of the (B, T) task index."""
        params = self.mlp2(self.mlp1(self.norm(tokens)))
        if self.static_bias:
            params = torch.cat([params, torch.zeros_like(params[..., :1])], dim=-1)
        if self.task_kernels is not None:
            params = params + gather_tokens(self.task_kernels, tasks)
        if self.kernel_log_gains is not None:
            gains = gather_tokens(self.kernel_log_gains, tasks).exp()
            params = torch.cat([F.normalize(params[..., :-1], dim=-1) * gains, params[..., -1:]], dim=-1)
        return params

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        params = self.kernels(tokens, tasks)
        weights, bias = params[..., :-1], params[..., -1:]
        b, f = features.shape[:2]
        logits = torch.bmm(weights, features.reshape(b, f, -1)) + bias  # (B, T, DHW)
        return logits.reshape(b, -1, *features.shape[2:])


# -- networks ---------------------------------------------------------------------------------------


class HermesR(nn.Module):
    """Hermes-R (see the module docstring for the contract and sizes).

    Example::

        net = HermesR(HermesConfig(channels=(8, 16, 16, 16, 16), head_dim=8))
        seg, mod = net(torch.zeros(2, 1, 32, 32, 32), torch.tensor([[0, 1], [12, -1]]), torch.tensor([0, 1]))
        seg.shape == (2, 2, 32, 32, 32) and mod.shape == (2, 2)
    """

    def __init__(self, config: HermesConfig = CPU_CONFIG) -> None:
        super().__init__()
        _validate(config)
        self.config = config
        c0, c1, c2, c3, c4 = config.channels
        self.backbone = ResUNet(config.in_channels, config.channels)
        widths = (c2, c3, c4, c3, c2)
        self.fusions = nn.ModuleList([
            PriorFusion(w, config.num_tasks, config.num_modalities, config.tokens_per_modality, n,
                        config.head_dim, config.mlp_ratio)
            for w, n in zip(widths, config.fusion_blocks, strict=True)])
        self.classifier = PriorClassifier(sum(widths), c0, config.num_tasks if config.task_kernels else None,
                                          config.normalised_kernels, config.static_bias)
        # the private task's copy of the last decoder stages (loaded from a checkpoint, private_stage.py)
        self.private = (copy.deepcopy(self.backbone.ups[4 - config.private_stages:]) if config.private_stages
                        else None)
        self.modality_norm = nn.LayerNorm(sum(widths))
        self.modality_head = _MLP(sum(widths), c2, config.num_modalities)
        if config.start_as_multihead:
            self._start_as_multihead()

    @torch.no_grad()
    def _start_as_multihead(self) -> None:
        """Zero the last layer of every feature update (attention output, MLP) and of the dynamic kernel's
        MLP, and draw the static kernels as nn.Conv3d draws a 1×1×1 conv (U(±1/√F)): the forward pass is
        then the multi-head network's, and gradients still reach every zeroed layer (docs/hermes.md)."""
        for fusion in self.fusions:
            for block in fusion.blocks:
                for layer in (block.f_attn.out, block.f_mlp[-1]):
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)
        last = self.classifier.mlp2[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        bound = (last.out_features - 1) ** -0.5
        nn.init.uniform_(self.classifier.task_kernels, -bound, bound)  # type: ignore[arg-type]

    def forward(self, image: torch.Tensor, tasks: torch.Tensor,
                modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input(image)
        net, fusions = self.backbone, self.fusions
        task_out: list[torch.Tensor] = []
        mod_out: list[torch.Tensor] = []

        def fuse(i: int, x: torch.Tensor) -> torch.Tensor:
            x, t, m = fusions[i](x, tasks, modality)
            task_out.append(t)
            mod_out.append(m)
            return x

        x0 = net.stem(image)
        x1 = net.downs[0](x0)
        x2 = fuse(0, net.downs[1](x1))
        x3 = fuse(1, net.downs[2](x2))
        x4 = fuse(2, net.downs[3](x3))
        y = fuse(3, net.ups[0](x4, x3))
        y = fuse(4, net.ups[1](y, x2))
        half = net.ups[2](y, x1)
        tokens = torch.cat(task_out, dim=-1)
        seg = self.classifier(tokens, net.ups[3](half, x0), tasks)
        if self.private is not None:
            own = self.private[-1](self.private[0](y, x1) if len(self.private) == 2 else half, x0)
            mine = (tasks == self.config.private_task).reshape(*tasks.shape, 1, 1, 1)
            seg = torch.where(mine, self.classifier(tokens, own, tasks), seg)
        mod = self.modality_head(self.modality_norm(torch.cat(mod_out, dim=-1)).mean(dim=1))
        return seg, mod


def select_tasks(logits: torch.Tensor, tasks: torch.Tensor, pad_logit: float = -20.0) -> torch.Tensor:
    """Channels of all-task logits (B, NUM_TASKS, D, H, W) for a (B, T) task index → (B, T, D, H, W);
    padding (-1) gets a constant ``pad_logit`` (background)."""
    b, n = logits.shape[:2]
    index = tasks.clamp(min=0) + torch.arange(b, device=tasks.device).unsqueeze(1) * n
    picked = logits.reshape(b * n, *logits.shape[2:]).index_select(0, index.reshape(-1))
    picked = picked.reshape(*tasks.shape, *logits.shape[2:])
    pad = (tasks < 0).reshape(*tasks.shape, *([1] * (logits.dim() - 2)))
    return torch.where(pad, torch.full_like(picked, pad_logit), picked)


class MultiHeadUNet(nn.Module):
    """The "multi-head" baseline: the same ResUNet, one sigmoid output channel per task, no priors and
    no modality head. ``forward(image)`` → (B, num_tasks, D, H, W); ``forward(image, tasks)`` → the
    requested channels (B, T, D, H, W), the same contract as `HermesR`'s segmentation output."""

    def __init__(self, config: HermesConfig = CPU_CONFIG) -> None:
        super().__init__()
        _validate(config)
        self.config = config
        self.backbone = ResUNet(config.in_channels, config.channels)
        self.head = nn.Conv3d(config.channels[0], config.num_tasks, 1)

    def forward(self, image: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(image)
        net = self.backbone
        x0 = net.stem(image)
        x1 = net.downs[0](x0)
        x2 = net.downs[1](x1)
        x3 = net.downs[2](x2)
        x4 = net.downs[3](x3)
        y = net.ups[3](net.ups[2](net.ups[1](net.ups[0](x4, x3), x2), x1), x0)
        logits = self.head(y)
        return logits if tasks is None else select_tasks(logits, tasks)
