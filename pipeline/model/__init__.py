"""The model stack: loading INSTRUCTOR, its precision and attention, token counts, the fingerprint."""
