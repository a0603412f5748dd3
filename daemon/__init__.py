"""The daemon: sources, the join, the pipeline, the CLI (the only package that does I/O)."""

# First: the modules of this package may be compiled (setup.py); one edited since runs as
# its source (see extractors/_compiled.py).
from nextstate.extractors._compiled import prefer_fresh_source

prefer_fresh_source(__name__, __path__)
