"""torch.hub entry points: ``torch.hub.load(<this repo dir>, 'dinov2_vitb14', source='local')``.

Weights are never downloaded: pass ``weights=<local path>`` or put the official files in
``$DINO_MM_WEIGHTS`` (see ``dino_mm.hub.utils``).
"""
dependencies = ['torch']

from dino_mm.hub import *  # noqa: E402,F401,F403
