"""Example services used by the demo, the docs and the tests."""
