from .centering import LazyCenterMixin, sinkhorn_knopp
from .dino_clstoken_loss import DINOLoss
from .gram_loss import GramLoss
from .ibot_patch_loss import iBOTPatchLoss
from .koleo_loss import KoLeoLoss

__all__ = [
    'DINOLoss', 'GramLoss', 'iBOTPatchLoss', 'KoLeoLoss', 'LazyCenterMixin', 'sinkhorn_knopp'
]
