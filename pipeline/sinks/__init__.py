"""Sinks: where vectors are written (see ``base.Sink``)."""
