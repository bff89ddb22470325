"""Executor plugins that ship with the kernel (registered like third-party ones)."""
