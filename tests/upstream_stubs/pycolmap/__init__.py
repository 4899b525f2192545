"""Test stand-in (see tests/upstream_stubs/README.md): upstream imports it for COLMAP export only."""
