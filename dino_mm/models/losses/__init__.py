from .centering import LazyCenterMixin, sinkhorn_knopp
from .clip_loss import CLIPLoss, clip_loss
from .dino_clstoken_loss import DINOLoss
from .gram_loss import GramLoss
from .ibot_patch_loss import iBOTPatchLoss
from .koleo_loss import KoLeoLoss, KoLeoLossDistributed

__all__ = [
    'CLIPLoss', 'clip_loss', 'DINOLoss', 'GramLoss', 'iBOTPatchLoss', 'KoLeoLoss', 'KoLeoLossDistributed',
    'LazyCenterMixin', 'sinkhorn_knopp'
]
