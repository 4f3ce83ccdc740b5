"""Sources: where transcript chunks are read from (see ``base.Source``)."""
