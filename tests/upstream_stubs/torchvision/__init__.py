"""Test stand-in for torchvision (see tests/upstream_stubs/README.md): only what DA3's InputProcessor uses."""
from . import transforms  # noqa: F401
