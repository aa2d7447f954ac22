"""The ``streamfed`` command line, one module per command group."""
