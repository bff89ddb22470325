"""Services that ship with the kernel, and the examples."""
