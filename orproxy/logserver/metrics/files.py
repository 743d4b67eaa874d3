"""Metric values that every worker process of one logging server adds to, and any of them reads.

Under gunicorn any worker answers a scrape, and each counts the exchanges whose final
rewrite it wrote (counting.py), so no process holds the totals. Each keeps its values in
mmap files of its own in `<log-dir>/.ids/metrics/`, in prometheus_client's multiprocess
format (`counter_<slot>.db`, `histogram_<slot>.db`, `gauge_livesum_<slot>.db`), and a
scrape sums every file (prometheus_client's MultiProcessCollector.merge). A write is a
16-byte store into shared memory, so a worker killed a moment after counting has still
counted.

The files are named by a *slot*, not a pid: a process takes the lowest slot whose lock
file (`slot-<n>.lock`) no live process holds, and holds it while it lives. A new worker
(or a restarted server) so goes on from its predecessor's counts: the totals never go
back, and the directory holds as many files as workers ran at once, not one set per pid
ever started. Gauges are the state of a live process: a scrape reads those of held slots
only, so a dead worker's last queue length is not summed.
"""
from __future__ import annotations

import bisect
import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

MAX_SLOTS = 256
KINDS = {"counter": "counter", "histogram": "histogram", "gauge": "gauge_livesum"}  # kind -> file prefix


@dataclass(frozen=True)
class Family:
    """One metric: its name (a counter's without `_total`), help, kind, label names, and a
    histogram's bucket bounds (+Inf is added)."""
    name: str
    help: str
    kind: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert not self.buckets or self.kind == "histogram"


class _Series:
    """One label set's keys in the file and their current values (a histogram: its sum,
    then one bucket per bound, +Inf last; the count is summed from the buckets)."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: list[str], values: list[float]) -> None:
        self.keys, self.values = keys, values


class MetricFiles:
    """This process's slot in a directory of metric files; see the module docstring.
    Writes come from the gevent loop only (MmapedDict takes no lock)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.slot, self._lock = _claim_slot(directory)
        try:  # gauges are a live process's state, never its predecessor's
            os.unlink(os.path.join(directory, f"{KINDS['gauge']}_{self.slot}.db"))
        except FileNotFoundError:
            pass
        self._files: dict[str, MmapedDict] = {}
        self._series: dict[tuple[str, tuple[str, ...]], _Series] = {}

    # -- writing ---------------------------------------------------------------------------

    def inc(self, family: Family, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        series = self._get(family, labels)
        series.values[0] += amount
        self._file(family.kind).write_value(series.keys[0], series.values[0], 0.0)

    def observe(self, family: Family, labels: tuple[str, ...], value: float) -> None:
        series = self._get(family, labels)
        bucket = 1 + bisect.bisect_left(family.buckets, value)  # le: the first bound >= value
        file = self._file("histogram")
        for i in (0, bucket):
            series.values[i] += value if i == 0 else 1.0
            file.write_value(series.keys[i], series.values[i], 0.0)

    def set(self, family: Family, labels: tuple[str, ...], value: float) -> None:
        series = self._get(family, labels)
        if series.values[0] != value:
            series.values[0] = value
            self._file("gauge").write_value(series.keys[0], value, 0.0)

    def declare(self, family: Family, labels: tuple[str, ...] = ()) -> None:
        """Make a series exist (at its current value, 0 if new): scrapes list it from the start."""
        self._get(family, labels)

    def _get(self, family: Family, labels: tuple[str, ...]) -> _Series:
        series = self._series.get((family.name, labels))
        if series is None:
            series = self._series[(family.name, labels)] = self._open_series(family, labels)
        return series

    def _open_series(self, family: Family, labels: tuple[str, ...]) -> _Series:
        assert len(labels) == len(family.labels), (family.name, labels)
        names = list(family.labels)
        if family.kind == "counter":
            keys = [mmap_key(family.name, family.name + "_total", names, list(labels), family.help)]
        elif family.kind == "gauge":
            keys = [mmap_key(family.name, family.name, names, list(labels), family.help)]
        else:
            bounds = [*family.buckets, float("inf")]
            keys = [mmap_key(family.name, family.name + "_sum", names, list(labels), family.help)]
            keys += [mmap_key(family.name, family.name + "_bucket", [*names, "le"],
                              [*labels, floatToGoString(b)], family.help) for b in bounds]
        file = self._file(family.kind)
        values = [file.read_value(key)[0] for key in keys]  # counts go on from a predecessor's
        return _Series(keys, values)

    def _file(self, kind: str) -> MmapedDict:
        file = self._files.get(kind)
        if file is None:
            file = self._files[kind] = MmapedDict(os.path.join(self.directory, f"{KINDS[kind]}_{self.slot}.db"))
        return file

    def label_values(self, family: Family, label: str) -> set[str]:
        """The values of one label that this slot's file holds already (also a predecessor's)."""
        at = family.labels.index(label)
        path = os.path.join(self.directory, f"{KINDS[family.kind]}_{self.slot}.db")
        if not os.path.exists(path):
            return set()
        found = set()
        for key, _, _, _ in MmapedDict.read_all_values_from_file(path):
            name, _, labels, _ = json.loads(key)
            if name == family.name and family.labels[at] in labels:
                found.add(labels[family.labels[at]])
        return found

    # -- reading ---------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Every slot's counters and histograms, and the live slots' gauges, summed."""
        files = []
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".db"):
                continue
            if name.startswith("gauge_") and not self._alive(name.rsplit("_", 1)[1][:-3]):
                continue
            files.append(os.path.join(self.directory, name))
        return MultiProcessCollector.merge(files, accumulate=True)

    def _alive(self, slot: str) -> bool:
        if slot == str(self.slot):
            return True
        try:
            fd = os.open(os.path.join(self.directory, f"slot-{slot}.lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # its process holds it
        finally:
            os.close(fd)  # (releases the lock taken, if it was)
        return False

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
        self._series.clear()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _claim_slot(directory: str) -> tuple[int, int]:
    """The lowest slot no live process holds, and its lock file's descriptor (held)."""
    for slot in range(MAX_SLOTS):
        fd = os.open(os.path.join(directory, f"slot-{slot}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, fd
        except BlockingIOError:
            os.close(fd)
    raise OSError(f"{directory}: all {MAX_SLOTS} metric slots are held")
