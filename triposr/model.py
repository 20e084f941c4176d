"""The TripoSR network: mirrors upstream `tsr/system.py` (class TSR) - image encoder, triplane tokens,
backbone, upsampler, NeRF decoder - plus the inference helpers `encode`, `query` and `extract_mesh`.

`TripoSR(config)` only builds the modules (it works on the `meta` device); weights come from
`loading.load_model`. Volume rendering (`TSR.render`) and texture baking are left out: the service only needs
meshes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import nn

from . import mesh as mesh_ops
from .config import TripoSRConfig
from .decoder import NeRFMLP, TriplaneQuery
from .images import ImageLike, resize_square, to_float_rgb
from .transformer import Transformer1D
from .triplane import TriplaneTokenizer, TriplaneUpsampler
from .vit import DINOImageTokenizer

# points per decoder call; bounds query memory (~100 MB at 65536). Upstream's run.py uses 8192, which on a
# 2-core CPU made adaptive mesh@256 3x slower (53-61 s vs 17-20 s, full-size checkpoint, /tmp/chunk.py run)
DEFAULT_CHUNK_SIZE = 65536
# Decoder calls get at least this many rows (zero-padded): MKL's sgemm rounds differently below ~7 rows, so a
# point's density would otherwise depend on which other points share its call (see `_decode_many`)
MIN_DECODER_ROWS = 16
# Grid samples of the frames whose adaptive extractions run in lockstep (4 bytes each on the host): four
# frames at 256, so a batch of eight at 256 takes two groups and ~0.3 GB instead of ~0.6 GB
LOCKSTEP_SAMPLES = 4 * 256**3


class TripoSR(nn.Module):
    """Single image -> triplane scene code -> density / colour field -> mesh."""

    def __init__(self, config: TripoSRConfig, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self.config = config
        self.chunk_size = chunk_size
        self.half_precision = False  # encoder weights in float16 (CUDA only; set by load_model)
        self.image_tokenizer = DINOImageTokenizer(**config.vit.module_kwargs())
        self.tokenizer = TriplaneTokenizer(plane_size=config.plane_size, num_channels=config.num_channels)
        self.backbone = Transformer1D(
            in_channels=config.num_channels,
            num_attention_heads=config.num_attention_heads,
            attention_head_dim=config.attention_head_dim,
            num_layers=config.num_layers,
            cross_attention_dim=config.cross_attention_dim,
            norm_num_groups=config.norm_num_groups,
            attention_bias=config.attention_bias,
        )
        self.post_processor = TriplaneUpsampler(
            in_channels=config.num_channels, out_channels=config.plane_channels
        )
        self.decoder = NeRFMLP(
            in_channels=config.decoder_in_channels,
            n_neurons=config.decoder_neurons,
            n_hidden_layers=config.decoder_hidden_layers,
            activation=config.decoder_activation,
        )
        self.triplane_query = TriplaneQuery(radius=config.radius, density_bias=config.density_bias)
        # backbone.prefix of the learned triplane tokens: image-independent, so computed once per weights
        self._prefix: dict[tuple, torch.Tensor] = {}

    def half_encoder(self) -> TripoSR:
        """Store the encoder (ViT, triplane tokens, backbone, upsampler) in float16: half the memory, and
        faster on GPUs. `encode` then runs under float16 autocast (norms and softmax statistics in float32)
        and still returns float32 scene codes; the decoder and mesh extraction stay float32. For CUDA."""
        for module in (self.image_tokenizer, self.tokenizer, self.backbone, self.post_processor):
            module.half()
        self.half_precision = True
        return self

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    # ---- image -> scene code -------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Images of any size -> (B, 3, S, S) float32 in [0, 1] on the model's device, S = cond_image_size."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)  # (B, H, W, 3)
        elif isinstance(images, np.ndarray | Image.Image):
            images = [images]
        if len(images) == 0:
            raise ValueError("encode needs at least one image")
        size = self.config.cond_image_size
        return torch.stack([resize_square(to_float_rgb(im).to(self.device), size) for im in images])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) in [0, 1] -> scene codes (B, 3, C', 2P, 2P)."""
        batch = pixels.shape[0]
        image_tokens = self.image_tokenizer(pixels)  # (B, 1 + N, D), CLS first
        tokens = self.tokenizer(batch)  # (B, C, 3*P*P)
        h = self._backbone_prefix().expand(batch, -1, -1).clone()  # (B, 3*P*P, inner), updated in place
        tokens = self.backbone.finish(h, tokens, image_tokens)  # (B, C, 3*P*P)
        planes = self.tokenizer.detokenize(tokens)  # (B, 3, C, P, P)
        return self.post_processor(planes)  # (B, 3, C', 2P, 2P)

    def _backbone_prefix(self) -> torch.Tensor:
        """`backbone.prefix` of the learned tokens (1, 3*P*P, inner): the first block's self-attention sees
        only them, never the image (~1/16 of the backbone's attention work per image, saved)."""
        first = self.backbone.transformer_blocks[0]
        watched = [self.tokenizer.embeddings]
        for module in (self.backbone.norm, self.backbone.proj_in, first.norm1, first.attn1):
            watched += module.parameters()
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in watched)
        if key not in self._prefix:
            self._prefix = {key: self.backbone.prefix(self.tokenizer(1))}
        return self._prefix[key]

    @torch.inference_mode()
    def encode(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """HxWx3 uint8 arrays or PIL images (any size; stretched to a square like upstream) -> scene codes (B,
        3, C, H, W) float32 on the model's device."""
        pixels = self.preprocess(images)
        if not self.half_precision:
            return self.forward(pixels)
        # float16 weights; autocast keeps LayerNorm/GroupNorm/softmax statistics in float32
        with torch.autocast(device_type=self.device.type, dtype=torch.float16):
            return self.forward(pixels.half()).float()

    # ---- scene code -> field -> mesh ----------------------------------------------------------------------

    def _scene_code(self, scene_code: torch.Tensor) -> torch.Tensor:
        if scene_code.ndim == 5 and scene_code.shape[0] == 1:
            scene_code = scene_code[0]
        if scene_code.ndim != 4 or scene_code.shape[0] != 3:
            raise ValueError(f"expected one scene code (3, C, H, W), got shape {tuple(scene_code.shape)}")
        return scene_code.to(self.device, torch.float32)

    @torch.inference_mode()
    def query(self, points: torch.Tensor, scene_code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Field at world points (..., 3) for one scene code (3, C, H, W): dict of density (..., 1) raw,
        features (..., 3) raw, density_act (..., 1) = exp(density + density_bias), color (..., 3) =
        sigmoid(features). Evaluated in chunks of `chunk_size` points."""
        code = self._scene_code(scene_code)
        lead = points.shape[:-1]
        flat = points.reshape(-1, 3).to(self.device, torch.float32)
        step = self.chunk_size if self.chunk_size > 0 else max(flat.shape[0], 1)
        parts = [
            self.triplane_query(self.decoder, flat[i : i + step], code) for i in range(0, flat.shape[0], step)
        ]
        if not parts:
            parts = [self.triplane_query(self.decoder, flat, code)]
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # (N, k) each
        return {k: v.reshape(*lead, v.shape[-1]) for k, v in out.items()}

    def density_field(self, scene_code: torch.Tensor) -> mesh_ops.Field:
        """The function marching cubes thresholds: world points (N, 3) -> density_act (N,)."""
        code = self._scene_code(scene_code)
        query, decoder = self.triplane_query, self.decoder

        def field(points: torch.Tensor) -> torch.Tensor:
            return torch.exp(query.log_density(decoder, points, code))

        return field

    def _decode_many(
        self, codes: Sequence[torch.Tensor], points: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Decoder outputs (N_i, 4) at points (N_i, 3) of several scene codes (3, C, H, W), in decoder calls
        of at most `chunk_size` rows that mix the codes' points: one call serves many frames' queries.

        Every call has at least MIN_DECODER_ROWS rows (zero-padded): below that the CPU matrix kernels take
        another summation path, so a point's value would depend on what else shares its call. With the
        floor, each point gets the same bits whatever batch it is in (tests/triposr/test_batching.py).
        """
        step = self.chunk_size if self.chunk_size > 0 else max(sum(len(p) for p in points), 1)
        outs: list[list[torch.Tensor]] = [[] for _ in points]
        chunk: list[tuple[int, torch.Tensor]] = []
        rows = 0

        def flush() -> None:
            feats = [self.triplane_query.features(pts, codes[pos]) for pos, pts in chunk]
            n = sum(len(f) for f in feats)
            if n < MIN_DECODER_ROWS:
                feats.append(feats[0].new_zeros(MIN_DECODER_ROWS - n, feats[0].shape[1]))
            out = self.decoder(feats[0] if len(feats) == 1 else torch.cat(feats))  # (n', 4)
            start = 0
            for pos, pts in chunk:
                outs[pos].append(out[start : start + len(pts)])
                start += len(pts)

        for pos, pts in enumerate(points):
            at = 0
            while at < len(pts):
                take = min(step - rows, len(pts) - at)
                chunk.append((pos, pts[at : at + take]))
                rows, at = rows + take, at + take
                if rows == step:
                    flush()
                    chunk, rows = [], 0
        if chunk:
            flush()
        empty = torch.zeros((0, 4), device=self.device)
        return [torch.cat(parts) if parts else empty for parts in outs]

    @torch.inference_mode()
    def extract_volumes(
        self,
        scene_codes: Sequence[torch.Tensor],
        resolutions: Sequence[int],
        threshold: float = 25.0,
        *,
        method: Literal["adaptive", "dense"] = "adaptive",
        skip: Callable[[int], bool] | None = None,
    ) -> list[mesh_ops.Volume]:
        """The device part of mesh extraction for several scene codes (3, C, H, W), each at its resolution:
        their adaptive refinements run in lockstep and every round's density queries of all codes go through
        shared decoder calls. Marching cubes is left to `Volume.surface()` (CPU, any thread).

        Frames are taken in groups of at most LOCKSTEP_SAMPLES grid samples in all, which bounds the host
        memory of the per-frame sample arrays (4 bytes per sample).

        `skip(i)`, asked every round: once true, code i's remaining queries are answered with an empty field
        without the device (its request was cancelled), so its refinement ends at once and the others go on;
        its volume is meaningless and must not be meshed.
        """
        if len(scene_codes) != len(resolutions):
            raise ValueError(f"{len(scene_codes)} scene codes for {len(resolutions)} resolutions")
        if method not in ("adaptive", "dense"):
            raise ValueError(f"method must be 'adaptive' or 'dense', got {method!r}")
        codes = [self._scene_code(c) for c in scene_codes]
        radius, level = self.config.radius, float(threshold)

        def plan(resolution: int) -> mesh_ops.Plan:
            if method == "dense":
                return mesh_ops.dense_plan(resolution, level, radius=radius)
            return mesh_ops.adaptive_plan(resolution, level, radius=radius, log_domain=True)

        volumes: list[mesh_ops.Volume] = []
        for group in _lockstep_groups([int(r) for r in resolutions]):

            def evaluate(requests: list[tuple[int, np.ndarray]], group=group) -> list[np.ndarray]:
                out: list[np.ndarray | None] = [None] * len(requests)
                live = []
                for n, (pos, flat) in enumerate(requests):
                    if skip is not None and skip(group[pos]):
                        out[n] = np.zeros(len(flat), np.float32)  # below any threshold: nothing to refine
                    else:
                        live.append(n)
                frames = [group[requests[n][0]] for n in live]
                pts = [
                    mesh_ops.grid_points(requests[n][1], resolutions[i], radius, self.device)
                    for n, i in zip(live, frames, strict=True)
                ]
                outs = self._decode_many([codes[i] for i in frames], pts) if live else []
                bias = self.triplane_query.density_bias
                for n, o in zip(live, outs, strict=True):
                    out[n] = torch.exp(o[:, 0] + bias).float().cpu().numpy()
                return out

            volumes += mesh_ops.run_plans([plan(int(resolutions[i])) for i in group], evaluate)
        return volumes

    @torch.inference_mode()
    def vertex_colors(
        self, scene_codes: Sequence[torch.Tensor], vertices: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """RGBA uint8 (V_i, 4) colours at vertices (V_i, 3) of several scene codes, in shared decoder
        calls."""
        codes = [self._scene_code(c) for c in scene_codes]
        pts = [torch.from_numpy(np.asarray(v, np.float32)).to(self.device) for v in vertices]
        out = []
        for o in self._decode_many(codes, pts):
            rgb = torch.sigmoid(o[:, 1:4]).float().cpu().numpy()
            colors = np.empty((len(rgb), 4), dtype=np.uint8)
            colors[:, :3] = np.clip(np.round(rgb * 255.0), 0, 255)
            colors[:, 3] = 255
            out.append(colors)
        return out

    @torch.inference_mode()
    def extract_meshes(
        self,
        scene_codes: Sequence[torch.Tensor],
        resolutions: Sequence[int],
        threshold: float = 25.0,
        with_colors: bool = True,
        method: Literal["adaptive", "dense"] = "adaptive",
    ) -> list[trimesh.Trimesh]:
        """`extract_mesh` for several scene codes with their queries batched together; the meshes are the
        ones `extract_mesh` gives for each code alone."""
        volumes = self.extract_volumes(scene_codes, resolutions, threshold, method=method)
        surfaces = [v.surface() for v in volumes]
        colors = self.vertex_colors(scene_codes, [s.vertices for s in surfaces]) if with_colors else None
        return [surface_mesh(s, colors[i] if colors is not None else None) for i, s in enumerate(surfaces)]

    def extract_mesh(
        self,
        scene_code: torch.Tensor,
        resolution: int = 256,
        threshold: float = 25.0,
        with_colors: bool = True,
        method: Literal["adaptive", "dense"] = "adaptive",
    ) -> trimesh.Trimesh:
        """Surface density_act = threshold of one scene code (3, C, H, W) -> mesh in TripoSR's native frame (Z
        up, camera on +X, world units in [-radius, radius]), vertex colours uint8 RGBA. No surface -> empty
        mesh.

        method "dense" evaluates all resolution^3 grid samples like upstream; "adaptive" (default) refines a
        coarse grid only where surface can be (`mesh.extract_adaptive`) and gives the same surface for far
        fewer queries.
        """
        return self.extract_meshes([scene_code], [resolution], threshold, with_colors, method)[0]

    def extract_surface(
        self,
        scene_code: torch.Tensor,
        resolution: int = 256,
        threshold: float = 25.0,
        *,
        method: Literal["adaptive", "dense"] = "adaptive",
    ) -> mesh_ops.Surface:
        """Vertices and faces without colours, plus the number of field queries (see `extract_mesh`)."""
        return self.extract_volumes([scene_code], [resolution], threshold, method=method)[0].surface()


def surface_mesh(surface: mesh_ops.Surface, colors: np.ndarray | None) -> trimesh.Trimesh:
    """A Surface (+ RGBA uint8 colours) as a trimesh; an empty surface gives an empty mesh."""
    if len(surface.faces) == 0:
        return trimesh.Trimesh()
    return trimesh.Trimesh(vertices=surface.vertices, faces=surface.faces, vertex_colors=colors)


def _lockstep_groups(resolutions: list[int]) -> list[list[int]]:
    """Consecutive frame positions in groups of at most LOCKSTEP_SAMPLES grid samples (at least one each)."""
    groups: list[list[int]] = []
    total = 0
    for i, r in enumerate(resolutions):
        if not groups or total + r**3 > LOCKSTEP_SAMPLES:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += r**3
    return groups
