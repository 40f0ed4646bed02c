"""dino_mm test suite (a package so spawned workers can import `tests.*` modules)."""
