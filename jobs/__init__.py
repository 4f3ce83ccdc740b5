"""Entry points: the ``podembed`` CLI and the Modal app. They parse and wire; ``pipeline`` works."""
