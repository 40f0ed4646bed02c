# Owned by the area that fills it; keep imports sorted.
