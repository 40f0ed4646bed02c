"""Encoder / decoder of the DINOv3 Plain-DETR detector (official module names).

The official detector uses a DETR encoder (post-norm, ``nn.MultiheadAttention``) and a
pre-norm "global" decoder whose cross attention carries a box relative position bias
decomposed along x and y (two small MLPs). mmdet's DETR layers wrap their attention and
FFN in differently named submodules, so these layers are spelled out with the official
attribute names to keep the checkpoint keys; the attention maths itself is PyTorch's.
Only the configuration of the released detector (two-stage, mixed query selection,
iterative box refinement with look-forward-twice, absolute-coordinate
reparameterisation, linear RPE) is implemented.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import resize_padding_mask
from .box_ops import delta_to_cxcywh, sine_box_embedding

__all__ = ['EncoderLayer', 'Encoder', 'GlobalRPECrossAttention', 'GlobalDecoderLayer',
           'GlobalDecoder', 'PlainDETRTransformer', 'box_rpe_bias', 'LayerNorm2D']


class LayerNorm2D(nn.Module):
    """LayerNorm over the channels of an NCHW map, kept as ``ln`` (official key)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EncoderLayer(nn.Module):
    """Post-norm DETR encoder layer (self attention with positions on queries/keys, FFN).

    Args:
        d_model (int): Width.
        nhead (int): Attention heads.
        dim_feedforward (int): FFN hidden width.
        dropout (float): FFN / residual dropout (the attention itself has none).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens, (B, N) bool padding mask, (B, N, C) positions."""
        qk = src + pos
        attn = self.self_attn(qk, qk, src, key_padding_mask=padding_mask,
                              need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` (no final norm, as the official post-norm one)."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, padding_mask, pos)
        return src


def box_rpe_bias(boxes_cxcywh: torch.Tensor, feat_hw: Tuple[int, int], stride: int,
                 mlp_x: nn.Module, mlp_y: nn.Module) -> torch.Tensor:
    """Box relative position bias of the global cross attention, per head.

    For a query box ``(x1, y1, x2, y2)`` and a feature cell at pixel centre
    ``((j + 0.5) * stride, (i + 0.5) * stride)``, the bias is
    ``mlp_x([x1 - cx_j, x2 - cx_j]) + mlp_y([y1 - cy_i, y2 - cy_i])``: decomposing
    along the axes costs ``h + w`` MLP evaluations per query instead of ``h * w``.

    Args:
        boxes_cxcywh (Tensor): (B, Q, 4) absolute-pixel query boxes.
        feat_hw (tuple[int, int]): Feature map size ``(h, w)``.
        stride (int): Pixels per feature cell.
        mlp_x, mlp_y (nn.Module): 2 -> num_heads MLPs.

    Returns:
        Tensor: (B, num_heads, Q, h * w) additive attention bias.
    """
    h, w = feat_hw
    half = boxes_cxcywh[..., 2:] / 2
    xyxy = torch.cat([boxes_cxcywh[..., :2] - half, boxes_cxcywh[..., :2] + half], dim=-1)
    centres_x = (torch.arange(w, dtype=torch.float32, device=xyxy.device) + 0.5) * stride
    centres_y = (torch.arange(h, dtype=torch.float32, device=xyxy.device) + 0.5) * stride
    dx = xyxy[:, :, None, 0::2] - centres_x[None, None, :, None]  # B, Q, w, 2
    dy = xyxy[:, :, None, 1::2] - centres_y[None, None, :, None]  # B, Q, h, 2
    bias_x, bias_y = mlp_x(dx), mlp_y(dy)  # B, Q, w|h, heads
    bias = bias_y[:, :, :, None] + bias_x[:, :, None]  # B, Q, h, w, heads
    return bias.flatten(2, 3).permute(0, 3, 1, 2)


def _cpb_mlp(hidden_dim: int, num_heads: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, num_heads, bias=False))


class GlobalRPECrossAttention(nn.Module):
    """Multi-head cross attention over the whole map, biased by :func:`box_rpe_bias`.

    Args:
        dim (int): Width.
        num_heads (int): Heads.
        rpe_hidden_dim (int): Hidden width of the two bias MLPs (512 released).
        feature_stride (int): Pixels per memory cell (the patch size).
    """

    def __init__(self, dim: int, num_heads: int, rpe_hidden_dim: int = 512,
                 feature_stride: int = 16) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.feature_stride = feature_stride
        self.cpb_mlp1 = _cpb_mlp(rpe_hidden_dim, num_heads)
        self.cpb_mlp2 = _cpb_mlp(rpe_hidden_dim, num_heads)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, boxes: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, feat_hw: Tuple[int, int],
                padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend (B, Q, C) queries with (B, Q, 4) cxcywh boxes to (B, h*w, C) memory."""
        bias = box_rpe_bias(boxes, feat_hw, self.feature_stride, self.cpb_mlp1,
                            self.cpb_mlp2)
        if padding_mask is not None:
            # A fixed -100 (not -inf) on padded cells, as the released model was trained.
            bias = bias - 100.0 * padding_mask[:, None, None].to(bias.dtype)
        out = F.scaled_dot_product_attention(
            self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value)),
            attn_mask=bias.to(query.dtype).contiguous())
        return self.proj(out.transpose(1, 2).flatten(2))


class GlobalDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self attention, box-biased cross attention, FFN.

    Args:
        d_model (int): Width.
        d_ffn (int): FFN hidden width.
        n_heads (int): Heads.
        rpe_hidden_dim (int): Bias MLP hidden width.
        feature_stride (int): Pixels per memory cell.
        dropout (float): Dropout (inference: unused).
    """

    def __init__(self, d_model: int, d_ffn: int, n_heads: int, rpe_hidden_dim: int,
                 feature_stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = GlobalRPECrossAttention(d_model, n_heads, rpe_hidden_dim,
                                                  feature_stride)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, boxes: torch.Tensor,
                memory: torch.Tensor, memory_pos: torch.Tensor, feat_hw: Tuple[int, int],
                padding_mask: torch.Tensor,
                self_attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.norm2(tgt)
        qk = (x + query_pos).transpose(0, 1)  # this attention is sequence-first
        x = self.self_attn(qk, qk, x.transpose(0, 1), attn_mask=self_attn_mask,
                           need_weights=False)[0].transpose(0, 1)
        tgt = tgt + self.dropout2(x)
        x = self.cross_attn(self.norm1(tgt) + query_pos, boxes, memory + memory_pos, memory,
                            feat_hw, padding_mask)
        tgt = tgt + self.dropout1(x)
        x = self.linear2(self.dropout3(F.relu(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout4(x)


class GlobalDecoder(nn.Module):
    """Decoder with iterative box refinement in absolute coordinates.

    ``bbox_embed`` / ``class_embed`` are the detector's own heads, given through
    :meth:`share_heads`. The official model shares them by assigning the same modules
    twice, which is why their keys appear twice in its state dict (``class_embed.*``
    and ``transformer.decoder.class_embed.*``). Here they are held outside the module
    tree, so every parameter has one owner (optimiser constructors with ``paramwise_cfg``,
    FSDP and parameter counts see each once), while ``state_dict`` still writes the
    second copy of the keys and ``load_state_dict`` accepts (and drops) it.
    """

    _SHARED = ('class_embed', 'bbox_embed')

    def __init__(self, num_layers: int, d_model: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GlobalDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers
        self.final_layer_norm = nn.LayerNorm(d_model)
        self._shared: Tuple[Optional[nn.ModuleList], Optional[nn.ModuleList]] = (None, None)
        self._register_state_dict_hook(GlobalDecoder._write_shared_keys)
        self._register_load_state_dict_pre_hook(GlobalDecoder._drop_shared_keys)

    def share_heads(self, class_embed: nn.ModuleList, bbox_embed: nn.ModuleList) -> None:
        """Use the detector's per-layer heads (not registered as submodules here)."""
        self._shared = (class_embed, bbox_embed)

    @property
    def class_embed(self) -> Optional[nn.ModuleList]:
        return self._shared[0]

    @property
    def bbox_embed(self) -> Optional[nn.ModuleList]:
        return self._shared[1]

    @staticmethod
    def _write_shared_keys(module: 'GlobalDecoder', state_dict: dict, prefix: str,
                           local_metadata: dict) -> None:
        for name, heads in zip(GlobalDecoder._SHARED, module._shared):
            if heads is not None:
                for key, value in heads.state_dict().items():
                    state_dict[f'{prefix}{name}.{key}'] = value

    @staticmethod
    def _drop_shared_keys(state_dict: dict, prefix: str, *args) -> None:
        for key in [k for k in state_dict
                    if k.startswith(tuple(f'{prefix}{n}.' for n in GlobalDecoder._SHARED))]:
            del state_dict[key]

    def forward(self, tgt: torch.Tensor, boxes: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, feat_hw: Tuple[int, int], padding_mask: torch.Tensor,
                query_pos: torch.Tensor, max_shape: Tuple[torch.Tensor, torch.Tensor],
                self_attn_mask: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns per-layer normed states (L, B, Q, C) and refined boxes (L, B, Q, 4).

        With look-forward-twice the boxes returned for layer ``l`` are the ones refined
        by layer ``l`` itself (before the gradient stop used for the next layer).
        """
        states, refined = [], []
        x = tgt
        for lid, layer in enumerate(self.layers):
            x = layer(x, query_pos, boxes, memory, memory_pos, feat_hw, padding_mask,
                      self_attn_mask)
            normed = self.final_layer_norm(x)
            new_boxes = delta_to_cxcywh(boxes, self.bbox_embed[lid](normed), max_shape)
            states.append(normed)
            refined.append(new_boxes)
            boxes = new_boxes.detach()
        return torch.stack(states), torch.stack(refined)


class PlainDETRTransformer(nn.Module):
    """Encoder, two-stage proposal generation and decoder (official ``TransformerReParam``).

    Args:
        d_model (int): Width (``hidden_dim``; 768 released).
        nhead (int): Heads (8).
        dim_feedforward (int): Decoder FFN width (2048).
        encoder_dim_feedforward (int): Encoder FFN width. The official builder does
            not pass ``dim_feedforward`` to the encoder, so it is always 2048 there.
        num_encoder_layers (int): Encoder depth (6).
        num_decoder_layers (int): Decoder depth (6).
        rpe_hidden_dim (int): Decoder bias MLP width (512).
        feature_stride (int): Stride of the memory (the ViT patch size, 16).
        proposal_tgt_strides (Sequence[int]): Strides of the proposal levels made from
            the memory (``(8, 16, 32, 64)`` for patch 16).
        proposal_min_size (float): Box side of the first proposal level, doubled per
            level (50).
        num_feature_levels (int): Input levels (1).
        dropout (float): Dropout (0).
    """

    def __init__(self, d_model: int = 768, nhead: int = 8, dim_feedforward: int = 2048,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 rpe_hidden_dim: int = 512, feature_stride: int = 16,
                 proposal_tgt_strides: Sequence[int] = (8, 16, 32, 64),
                 proposal_min_size: float = 50.0, num_feature_levels: int = 1,
                 dropout: float = 0.0, encoder_dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.d_model = d_model
        self.feature_stride = feature_stride
        self.proposal_tgt_strides = list(proposal_tgt_strides)
        self.proposal_min_size = proposal_min_size
        self.decoder = GlobalDecoder(num_decoder_layers, d_model, d_ffn=dim_feedforward,
                                     n_heads=nhead, rpe_hidden_dim=rpe_hidden_dim,
                                     feature_stride=feature_stride, dropout=dropout)
        self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, d_model))
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
        self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        self.enc_output_proj = nn.ModuleList(
            self._resampler(d_model, feature_stride, s) for s in self.proposal_tgt_strides)
        self.encoder = Encoder(num_encoder_layers, d_model=d_model, nhead=nhead,
                               dim_feedforward=encoder_dim_feedforward, dropout=dropout)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def _resampler(d_model: int, in_stride: int, out_stride: int) -> nn.Module:
        """2x2 (transposed) convolutions, LayerNorm + GELU between, from one stride to another."""
        if out_stride == in_stride:
            return nn.Identity()
        up = out_stride < in_stride
        steps = int(round(math.log2(max(in_stride, out_stride) / min(in_stride, out_stride))))
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        layers: List[nn.Module] = []
        for _ in range(steps - 1):
            layers += [conv(d_model, d_model, 2, stride=2), LayerNorm2D(d_model), nn.GELU()]
        layers.append(conv(d_model, d_model, 2, stride=2))
        return nn.Sequential(*layers)

    def _proposal_levels(self, memory: torch.Tensor, mask: torch.Tensor, hw: Tuple[int, int]
                         ) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """Resample the (B, h*w, C) memory to every proposal stride and flatten them."""
        b, _, c = memory.shape
        fmap = memory.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        fmask = mask.view(b, hw[0], hw[1])
        mems, masks, shapes = [], [], []
        for proj in self.enc_output_proj:
            m = proj(fmap)
            mems.append(m.flatten(2).transpose(1, 2))
            masks.append(resize_padding_mask(fmask, m.shape[-2:]).flatten(1))
            shapes.append((m.shape[-2], m.shape[-1]))
        return torch.cat(mems, 1), torch.cat(masks, 1), shapes

    def gen_proposals(self, memory: torch.Tensor, mask: torch.Tensor, hw: Tuple[int, int]
                      ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Grid proposals (absolute cxcywh) with their memory, and the valid image extent.

        Level ``l`` places a ``min_size * 2**l`` square at every cell centre; proposals
        on padding or not well inside the valid image are parked at a constant far box
        and their memory zeroed.

        Returns:
            tuple: (B, S, C) proposal memory, (B, S, 4) proposals, ``(valid_h, valid_w)``
            in pixels, each (B, 1, 1).
        """
        mem, pmask, shapes = self._proposal_levels(memory, mask, hw)
        b = mem.shape[0]
        proposals = []
        for lvl, ((h, w), stride) in enumerate(zip(shapes, self.proposal_tgt_strides)):
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=mem.device),
                                    torch.arange(w, dtype=torch.float32, device=mem.device),
                                    indexing='ij')
            centres = (torch.stack([xs, ys], -1) + 0.5) * stride
            size = torch.full_like(centres, self.proposal_min_size * 2.0 ** lvl)
            proposals.append(torch.cat([centres, size], -1).view(1, -1, 4).expand(b, -1, -1))
        proposals = torch.cat(proposals, 1)
        # Valid extent from the finest level's mask.
        (h0, w0), s0 = shapes[0], self.proposal_tgt_strides[0]
        mask0 = pmask[:, :h0 * w0].view(b, h0, w0)
        valid_h = (~mask0[:, :, 0]).sum(1, keepdim=True) * s0
        valid_w = (~mask0[:, 0, :]).sum(1, keepdim=True) * s0
        extent = torch.cat([valid_w, valid_h, valid_w, valid_h], -1)[:, None].to(proposals.dtype)
        keep = ((proposals > 0.01 * extent) & (proposals < 0.99 * extent)).all(-1, keepdim=True)
        far = float(max(h0, w0) * s0)
        proposals = proposals.masked_fill(pmask[..., None], far).masked_fill(~keep, far)
        mem = mem.masked_fill(pmask[..., None], 0.0).masked_fill(~keep, 0.0)
        mem = self.enc_output_norm(self.enc_output(mem))
        return mem, proposals, (valid_h[:, None], valid_w[:, None])

    def forward(self, src: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                query_embed: torch.Tensor, num_queries: int,
                self_attn_mask: Optional[torch.Tensor] = None) -> dict:
        """Run encoder, proposal selection and decoder on one (B, C, h, w) level.

        Args:
            src (Tensor): (B, C, h, w) projected features.
            mask (Tensor): (B, h, w) bool padding mask.
            pos (Tensor): (B, C, h, w) position encoding.
            query_embed (Tensor): (Q, C) content queries (mixed selection).
            num_queries (int): Proposals kept (``Q``).
            self_attn_mask (Tensor, optional): (Q, Q) decoder self-attention mask.

        Returns:
            dict: ``hs`` (L, B, Q, C), ``init_reference`` (B, Q, 4), ``inter_references``
            (L, B, Q, 4), ``enc_outputs_class``, ``enc_outputs_coord`` (absolute cxcywh),
            ``enc_outputs_delta``, ``output_proposals``, ``max_shape``.
        """
        b, c, h, w = src.shape
        tokens = src.flatten(2).transpose(1, 2)
        mask_flat = mask.flatten(1)
        pos_flat = pos.flatten(2).transpose(1, 2) + self.level_embed[0].view(1, 1, -1)
        memory = self.encoder(tokens, mask_flat, pos_flat)

        prop_mem, proposals, max_shape = self.gen_proposals(memory, mask_flat, (h, w))
        if num_queries > proposals.shape[1]:
            raise ValueError(
                f'Plain-DETR selects {num_queries} queries among the {proposals.shape[1]} '
                f'proposals of a {h}x{w} feature map; use larger images or fewer queries '
                '(num_queries_one2one, and num_queries_one2many in training).')
        last = self.decoder.num_layers
        enc_class = self.decoder.class_embed[last](prop_mem)
        enc_delta = self.decoder.bbox_embed[last](prop_mem)
        enc_coord = delta_to_cxcywh(proposals, enc_delta, max_shape)
        # Proposals are ranked by the logit of class index 0, as the released model.
        top = torch.topk(enc_class[..., 0], num_queries, dim=1)[1]
        reference = torch.gather(enc_coord, 1, top[..., None].expand(-1, -1, 4)).detach()

        query_pos = self.pos_trans_norm(self.pos_trans(sine_box_embedding(reference, c)))
        query_pos = query_pos[..., :c].to(tokens.dtype)
        tgt = query_embed[None].expand(b, -1, -1)
        hs, inter = self.decoder(tgt, reference, memory, pos_flat, (h, w), mask_flat,
                                 query_pos, max_shape, self_attn_mask)
        return dict(hs=hs, init_reference=reference, inter_references=inter,
                    enc_outputs_class=enc_class, enc_outputs_coord=enc_coord,
                    enc_outputs_delta=enc_delta, output_proposals=proposals,
                    max_shape=max_shape)
