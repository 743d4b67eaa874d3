"""The files of a logging server whose bodies are in an object store (`--store s3://…`), as
the tests read the log dir's: a part or document by exchange and kind, read straight from
PostgreSQL's rows and moto's objects (range GETs over HTTP), not through the server.

The part reader is the tests' own: it joins a part's extents from offset 0, each byte once
(extents of a resent append may overlap), as store/objectstore.py is meant to."""
import json
import os

import psycopg


class StoredFile(object):
    """What a test asks of a log file's Path: its name, bytes, text and size."""

    def __init__(self, name, data):
        self.name, self._data = name, data

    def read_bytes(self):
        return self._data

    def read_text(self):
        return self._data.decode("utf-8")

    def stat(self):
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, len(self._data), 0, 0, 0))

    def __repr__(self):
        return "StoredFile(%r, %d bytes)" % (self.name, len(self._data))


class ObjectStoreFiles(object):
    """An exchange's files, by the server's --store and --index arguments."""

    def __init__(self, store_url, index_url):
        import boto3  # moto's own dependency: a client independent of the server's obstore
        self.bucket, _, prefix = store_url[len("s3://"):].partition("/")
        self.prefix = prefix + "/" if prefix else ""
        self.s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        self.index_url = index_url

    def _query(self, sql, args):
        with psycopg.connect(self.index_url, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()

    def document(self, uuid):
        rows = self._query("SELECT body FROM documents WHERE id = %s", (str(uuid).lower(),))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def part(self, uuid, name):
        data, end = bytearray(), 0
        for offset, length, obj, position in self._query(
                "SELECT part_offset, length, object, position FROM extents e WHERE id = %s AND name = %s "
                "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.object = e.object) "  # readable once completed
                "ORDER BY part_offset", (str(uuid).lower(), name)):
            if offset > end:
                break
            if offset + length > end:
                skip = end - offset
                data += self._range(obj, position + skip, length - skip)
                end = offset + length
        return bytes(data)

    def _range(self, obj, start, length):
        answer = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + obj,
                                    Range="bytes=%d-%d" % (start, start + length - 1))
        return answer["Body"].read()

    def files(self, uuid):
        """StoredFiles named as the log dir's: the parts the document names, and the document."""
        document = self.document(uuid)
        if document is None:
            return []
        found = [StoredFile(part["file"], self.part(uuid, part["file"]))
                 for _, part in sorted(document.get("parts", {}).items()) if part.get("file")]
        name = "%s_%s_metadata.json" % (document.get("timestamp"), str(uuid)[:8].lower())
        found.append(StoredFile(name, json.dumps(document).encode()))
        return sorted(found, key=lambda f: f.name)

    def holding(self, needle):
        """The objects of the store, and the documents, whose bytes hold ``needle``."""
        found = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for key in [o["Key"] for page in pages for o in page.get("Contents", [])]:
            if needle in self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read():
                found.append("s3://%s/%s" % (self.bucket, key))
        for exchange_id, body in self._query("SELECT id, body FROM documents", ()):
            if needle in body.encode():
                found.append("documents/" + exchange_id)
        return found
