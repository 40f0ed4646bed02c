"""Training loss of the DINOv3 Plain-DETR detector: hybrid (one-to-one + one-to-many)
Hungarian matching with the absolute-coordinate box reparameterisation.

The official DINOv3 repository ships the detector's inference code only; its loss is
the one of Plain-DETR (Lin et al., 2023, whose code the DINOv3 detector derives from),
with the DINOv3 detection defaults (``dinov3/eval/detection/config.py``):

* per decoder layer (the last one, each auxiliary one, and the two-stage proposals with
  every target relabelled as class 0), a Hungarian matching per image on the cost
  ``2 * focal_cost + 1 * L1(deltas) + 2 * (-GIoU)``, then
  ``2 * sigmoid focal loss (alpha 0.25, gamma 2) + 1 * L1(deltas) + 2 * GIoU loss``,
  each summed and divided by the number of target boxes (averaged over ranks,
  at least 1);
* the box L1 term is taken between the predicted deltas and the deltas that would
  move the query's reference box onto its target (:func:`box_to_delta`), not between
  boxes; boxes are absolute pixels of the network input;
* hybrid matching: the ``num_queries_one2many`` extra queries (masked from the
  one-to-one queries in the decoder self attention) are matched to the targets
  repeated ``k_one2many`` (6) times, without the proposal term, and their losses are
  added with weight ``lambda_one2many`` (1).

The matching and the three losses are mmdet's (``HungarianAssigner`` with
``FocalLossCost`` / ``IoUCost``, ``FocalLoss``, ``L1Loss``, ``GIoULoss``); only the
delta-space L1 matching cost, which mmdet has no counterpart for, is written here.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from mmdet.models.task_modules.assigners.match_cost import BaseMatchCost
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from mmengine.structures import InstanceData

from dino_mm.registry import MODELS, TASK_UTILS
from .box_ops import box_to_delta

__all__ = ['DeltaL1Cost', 'PlainDETRCriterion']


@TASK_UTILS.register_module()
class DeltaL1Cost(BaseMatchCost):
    """Matching cost: L1 distance between each query's predicted deltas and the deltas
    from its reference box to each target box (Plain-DETR's reparameterised box cost).

    ``pred_instances`` needs ``deltas`` (Q, 4) and ``ref_boxes`` (Q, 4, absolute
    cxcywh); ``gt_instances`` needs ``bboxes`` (M, 4, absolute xyxy).
    """

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: Optional[dict] = None, **kwargs) -> torch.Tensor:
        gt = bbox_xyxy_to_cxcywh(gt_instances.bboxes)
        target = box_to_delta(pred_instances.ref_boxes[:, None], gt[None])  # Q, M, 4
        cost = (pred_instances.deltas.float()[:, None] - target).abs().sum(-1)
        return cost * self.weight


def _default_assigner() -> dict:
    return dict(type='mmdet.HungarianAssigner', match_costs=[
        dict(type='mmdet.FocalLossCost', weight=2.0, alpha=0.25, gamma=2.0, eps=1e-8),
        dict(type='dino_mm.DeltaL1Cost', weight=1.0),
        dict(type='mmdet.IoUCost', iou_mode='giou', weight=2.0)])


@MODELS.register_module()
class PlainDETRCriterion(nn.Module):
    """Hybrid-matching set loss of :class:`dino_mm.PlainDETR` (see the module docstring).

    Args:
        loss_cls (dict): Classification loss. Defaults to mmdet's sigmoid
            ``FocalLoss`` (alpha 0.25, gamma 2) with weight 2.
        loss_bbox (dict): Delta regression loss. Defaults to ``L1Loss``, weight 1.
        loss_iou (dict): Box overlap loss. Defaults to ``GIoULoss``, weight 2.
        assigner (dict, optional): The matcher. Defaults to ``HungarianAssigner`` with
            focal (2, eps 1e-8 as the official cost), :class:`DeltaL1Cost` (1) and
            GIoU (2) costs.
        k_one2many (int): Repeats of the targets for the one-to-many queries (6).
        lambda_one2many (float): Weight of the one-to-many losses (1).
    """

    def __init__(self,
                 loss_cls: dict = dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0,
                                       alpha=0.25, loss_weight=2.0),
                 loss_bbox: dict = dict(type='mmdet.L1Loss', loss_weight=1.0),
                 loss_iou: dict = dict(type='mmdet.GIoULoss', loss_weight=2.0),
                 assigner: Optional[dict] = None, k_one2many: int = 6,
                 lambda_one2many: float = 1.0) -> None:
        super().__init__()
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_iou = MODELS.build(loss_iou)
        self.assigner = TASK_UTILS.build(assigner or _default_assigner())
        if k_one2many < 0:
            raise ValueError(f'k_one2many must be >= 0, got {k_one2many}')
        self.k_one2many = k_one2many
        self.lambda_one2many = lambda_one2many

    # ------------------------------------------------------------------ one output set
    def match(self, output: Dict[str, torch.Tensor], targets: List[InstanceData],
              img_metas: List[dict]) -> List[torch.Tensor]:
        """Per image, the (P, 2) ``[query, target]`` index pairs of the Hungarian matching."""
        logits, boxes = output['pred_logits'].detach(), output['pred_boxes'].detach()
        pairs = []
        for i, gt in enumerate(targets):
            pred = InstanceData(scores=logits[i].float(),
                                bboxes=bbox_cxcywh_to_xyxy(boxes[i].float()),
                                deltas=output['pred_deltas'][i].detach(),
                                ref_boxes=output['pred_boxes_old'][i].detach())
            result = self.assigner.assign(pred, gt, img_meta=img_metas[i])
            query = torch.nonzero(result.gt_inds > 0, as_tuple=False).squeeze(-1)
            pairs.append(torch.stack([query, result.gt_inds[query] - 1], dim=-1))
        return pairs

    def output_loss(self, output: Dict[str, torch.Tensor], targets: List[InstanceData],
                    img_metas: List[dict], num_boxes: float) -> Dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox`` and ``loss_iou`` of one layer's predictions."""
        logits = output['pred_logits']
        b, q, k = logits.shape
        pairs = self.match(output, targets, img_metas)
        labels = torch.full((b, q), k, dtype=torch.long, device=logits.device)  # k: no object
        img = torch.cat([torch.full_like(p[:, 0], i) for i, p in enumerate(pairs)])
        query = torch.cat([p[:, 0] for p in pairs])
        gt_boxes = torch.cat([t.bboxes[p[:, 1]] for t, p in zip(targets, pairs)])
        labels[img, query] = torch.cat([t.labels[p[:, 1]] for t, p in zip(targets, pairs)])
        loss_cls = self.loss_cls(logits.flatten(0, 1).float(), labels.flatten(),
                                 avg_factor=num_boxes)
        # The reference boxes are not detached here: with look-forward-twice the L1 term
        # also trains the previous layer's refinement, as in the official loss.
        target_deltas = box_to_delta(output['pred_boxes_old'][img, query],
                                     bbox_xyxy_to_cxcywh(gt_boxes))
        loss_bbox = self.loss_bbox(output['pred_deltas'][img, query].float(), target_deltas,
                                   avg_factor=num_boxes)
        pred_xyxy = bbox_cxcywh_to_xyxy(output['pred_boxes'][img, query].float())
        loss_iou = self.loss_iou(pred_xyxy, gt_boxes.float(), avg_factor=num_boxes)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)

    @staticmethod
    def num_boxes(targets: List[InstanceData], device: torch.device) -> float:
        """Target boxes per rank (the mean over ranks), at least 1."""
        count = torch.tensor(float(sum(len(t) for t in targets)), device=device)
        return reduce_mean(count).clamp(min=1.0).item()

    def set_loss(self, outputs: Dict[str, object], targets: List[InstanceData],
                 img_metas: List[dict], with_proposals: bool) -> Dict[str, torch.Tensor]:
        """Losses of the last layer (``loss_*``), the auxiliary layers (``d{i}.loss_*``)
        and, ``with_proposals``, the class-agnostic proposals (``enc_loss_*``)."""
        device = outputs['pred_logits'].device
        num_boxes = self.num_boxes(targets, device)
        losses = self.output_loss(outputs, targets, img_metas, num_boxes)
        for i, aux in enumerate(outputs.get('aux_outputs', [])):
            for key, value in self.output_loss(aux, targets, img_metas, num_boxes).items():
                losses[f'd{i}.{key}'] = value
        if with_proposals and 'enc_outputs' in outputs:
            binary = [InstanceData(bboxes=t.bboxes, labels=torch.zeros_like(t.labels))
                      for t in targets]
            enc = self.output_loss(outputs['enc_outputs'], binary, img_metas, num_boxes)
            losses.update({f'enc_{key}': value for key, value in enc.items()})
        return losses

    def forward(self, outputs: Dict[str, object], targets: List[InstanceData],
                img_metas: List[dict]) -> Dict[str, torch.Tensor]:
        """All weighted loss terms.

        Args:
            outputs (dict): :meth:`dino_mm.PlainDETR.forward_official` with
                ``hybrid=True``: the one-to-one predictions (``pred_logits``,
                ``pred_boxes`` absolute cxcywh, ``pred_boxes_old``, ``pred_deltas``,
                ``aux_outputs``, ``enc_outputs``) and ``one2many`` (the same keys but
                ``enc_outputs``) when the detector has one-to-many queries.
            targets (list[InstanceData]): Per image ``labels`` (logit indices) and
                ``bboxes`` (absolute xyxy pixels of the network input).
            img_metas (list[dict]): Per image meta information.

        Returns:
            dict[str, Tensor]: ``loss_cls`` / ``loss_bbox`` / ``loss_iou`` with the
            ``d{i}.`` and ``enc_`` variants, and the same under ``o2m.`` for the
            one-to-many queries (already multiplied by ``lambda_one2many``).
        """
        losses = self.set_loss(outputs, targets, img_metas, with_proposals=True)
        if self.k_one2many > 0 and outputs.get('one2many') is not None:
            k = self.k_one2many
            repeated = [InstanceData(bboxes=t.bboxes.repeat(k, 1), labels=t.labels.repeat(k))
                        for t in targets]
            many = self.set_loss(outputs['one2many'], repeated, img_metas,
                                 with_proposals=False)
            losses.update({f'o2m.{key}': value * self.lambda_one2many
                           for key, value in many.items()})
        return losses
