"""An object store and a ledger in memory, for the unit tests of segments and uploads
(store/segments.py, store/uploads.py): what S3 and PostgreSQL would hold, as dicts and lists."""
import gevent

from orproxy.logserver.store.objects import ObjectStoreError
from orproxy.logserver.store.uploads import PART_BYTES


class MemoryObjects(object):
    """put, get_range and multipart uploads of a dict; while `failing`, every call that
    stores raises as an unreachable store's do. Completing checks S3's rule: every part
    but the last at least 5 MiB (and, as R2 wants, all of one size)."""
    url = "s3://memory/test"

    def __init__(self):
        self.objects, self.failing = {}, False
        self.uploads = {}  # upload id -> {part number: bytes}

    def _store(self):
        gevent.sleep(0.01)  # an upload takes a while: other writers pile up meanwhile
        if self.failing:
            raise ObjectStoreError("the store is down")

    def put(self, key, data):
        self._store()
        self.objects[key] = data

    def get_range(self, key, start, length):
        return self.objects[key][start:start + length]

    def size(self, key):
        return len(self.objects[key]) if key in self.objects else None

    def start_upload(self, key):
        self._store()
        upload_id = f"{key}#{len(self.uploads)}"
        self.uploads[upload_id] = {}
        return upload_id

    def put_part(self, key, upload_id, number, data):
        self._store()
        self.uploads[upload_id][number] = bytes(data)
        return f"etag-{number}"

    def complete_upload(self, key, upload_id, parts):
        self._store()
        stored = self.uploads.pop(upload_id)
        sizes = [len(stored[n]) for n, _ in parts]
        assert all(size == PART_BYTES for size in sizes[:-1]), sizes
        self.objects[key] = b"".join(stored[n] for n, _ in parts)

    def abort_upload(self, key, upload_id):
        self.uploads.pop(upload_id, None)


class MemoryLedger(object):
    """What PostgreSQL would record of segments and uploads, as lists."""

    def __init__(self):
        self.recorded, self.parts, self.completed = [], [], []

    def segment_stored(self, key, segment):
        self.recorded.append((key, segment.extents))

    def part_stored(self, upload, number, etag, extent):
        self.parts.append((upload.object, number, list(extent)))

    def upload_completed(self, upload, extent):
        self.completed.append((upload.object, extent))

    def adopt_uploads(self):
        return 0

    def extents(self):
        """Every extent recorded: (id, name, part offset, length, object, position)."""
        found = [(*e[:4], key, e[4]) for key, extents in self.recorded for e in extents]
        found += [(*e[:4], key, e[4]) for key, _, e in self.parts]
        return found + [(*e[:4], key, e[4]) for key, e in self.completed if e is not None]
