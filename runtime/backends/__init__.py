"""Runtime loaders, one module per backend: ``irkit.runtime.backends.<name>:load``.

Each module imports only numpy, the standard library and its backend's native library,
and that lazily (inside ``load``), so importing this package costs nothing.
"""
