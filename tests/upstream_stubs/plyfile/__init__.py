"""Test stand-in (see tests/upstream_stubs/README.md): upstream imports it for Gaussian-splat PLY export only."""


class PlyData:  # names upstream imports; never used by the tests
    pass


class PlyElement:
    pass
