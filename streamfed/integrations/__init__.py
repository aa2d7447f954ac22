"""StreamFed inside other stream-processing frameworks.

Each integration is its own module and imports its framework only when imported itself:
``streamfed.integrations.faust`` needs the ``faust`` extra (``pip install 'streamfed[faust]'``).
"""
