"""``[sink]`` options for ``kind = "mongo"``: where vectors go and in which form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import FieldMap
from pipeline.errors import ConfigError
from pipeline.mongo.connection import (
    ConnectionOptions,
    check_field,
    check_name,
)


@dataclass(slots=True)
class MongoSinkOptions(ConnectionOptions):
    """``[sink]`` options for ``kind = "mongo"``."""

    database: str = ""
    # in_place: the chunk collection; collection mode: the vectors collection.
    collection: str = ""
    mode: Literal["in_place", "collection"] = "in_place"
    # Collection mode only: the chunk collection whose texts writes are checked against.
    chunks_collection: str = ""
    # Fields of the chunk documents: their id and their text (writes are conditional on it).
    id_field: str = "_id"
    text_field: str = "text"
    # Where the vector and its metadata go.
    vector_field: str = "embedding"
    meta_field: str = "embedding_meta"
    # "binary": BSON float32 vector (BinData subtype 9, what Atlas Vector Search indexes);
    # "array": array of doubles (about 3x larger).
    vector_format: Literal["binary", "array"] = "binary"
    # Updates per bulk_write.
    write_batch: int = 500
    # Create the indexes writes need (id_field when it is not _id; episode_id of a
    # vectors collection) if missing.
    create_indexes: bool = True

    def validate(self, prefix: str) -> None:
        """Names, field paths and sizes."""
        self.validate_connection(prefix)
        check_name(self.database, f"{prefix}.database", "database name")
        check_name(self.collection, f"{prefix}.collection", "collection name")
        if self.mode == "collection":
            if not self.chunks_collection:
                raise ConfigError(
                    f'{prefix}.chunks_collection: required when {prefix}.mode = "collection" '
                    "(the chunk collection whose texts vector writes are checked against)"
                )
            check_name(self.chunks_collection, f"{prefix}.chunks_collection", "collection name")
            if self.chunks_collection == self.collection:
                raise ConfigError(
                    f"{prefix}.collection: must differ from {prefix}.chunks_collection in "
                    'collection mode (use mode = "in_place" to write onto the chunks)'
                )
        elif self.chunks_collection:
            raise ConfigError(f'{prefix}.chunks_collection: only used with mode = "collection"')
        for key in ("id_field", "text_field", "vector_field", "meta_field"):
            check_field(getattr(self, key), f"{prefix}.{key}")
        clash = {self.vector_field, self.meta_field} & {self.id_field, self.text_field, "_id"}
        if clash or self.vector_field == self.meta_field:
            raise ConfigError(
                f"{prefix}.vector_field / {prefix}.meta_field: must differ from each other "
                "and from the id and text fields"
            )
        if self.write_batch < 1:
            raise ConfigError(f"{prefix}.write_batch: must be at least 1")

    def check_fields(self, fields: FieldMap, source_options: object, prefix: str) -> None:
        """Writing onto the chunk documents the source reads: both must name the same fields.

        Only a MongoDB source (its options are connection options) reads those documents."""
        if not isinstance(source_options, ConnectionOptions):
            return
        for ours, key in (("chunk_id", "id_field"), ("text", "text_field")):
            if getattr(fields, ours) != getattr(self, key):
                raise ConfigError(
                    f"{prefix}.{key}: is {getattr(self, key)!r} but source.fields.{ours} is "
                    f"{getattr(fields, ours)!r}; they name the same field of the chunk documents"
                )
