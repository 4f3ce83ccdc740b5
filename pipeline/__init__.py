"""podembed: offline batch embedding of podcast transcript chunks with INSTRUCTOR models.

The library is organised by role: ``sources`` read chunks, ``sinks`` store vectors,
``executors`` run the model, ``checkpoint`` remembers what is done, and ``runner``
wires them together. Nothing here imports torch at import time.
"""

__version__ = "0.1.0"
