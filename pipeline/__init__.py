"""podembed: offline batch embedding of podcast transcript chunks with INSTRUCTOR models.

The core modules here know no storage or compute technology: the four interfaces
(``source``, ``sink``, ``checkpoint``, ``executor``), the plain data between stages
(``records``), and the stages themselves (``shard_work``, ``batching``, ``embedder``,
``runner``, ``planning``, ``status``, ``report``). Each technology lives in its own
package (``files``, ``mongo``, ``modal``) and is registered with one line in
``registry``. See ARCHITECTURE.md. Nothing here imports torch at import time.
"""

__version__ = "0.1.0"
