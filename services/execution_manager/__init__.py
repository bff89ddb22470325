"""The execution manager: a kernel-mode service that runs heavy work on a pool."""
