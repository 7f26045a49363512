"""TensorBoard event files, written by the calling thread with a native checksum.

TensorBoard's Python writers (``torch.utils.tensorboard.SummaryWriter`` and
``tensorboard.summary.writer``) frame every record with a CRC-32C computed in
pure Python one byte at a time, write one record per scalar and run one thread
per writer: about 1 ms of CPU per log step of a run with 7 values, and a
histogram adds 0.6 ms. A 200-initialisation UCI sweep logs 1,800 runs x 400
steps, so that was a third of its time. :class:`EventWriter` writes the same
files (TensorBoard's ``Event`` / ``Summary`` / ``HistogramProto`` messages,
TFRecord framing, the ``events.out.tfevents.*`` name) with ``google-crc32c``,
one record per log step holding all its values: ~10 us per step.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Mapping

import google_crc32c
import torch
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

HISTOGRAM_BINS = 30
_uid = itertools.count()


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def histogram(values: torch.Tensor, bins: int = HISTOGRAM_BINS) -> HistogramProto:
    """The finite ``values`` as TensorBoard's histogram: ``bins`` equal bins from
    min to max (TensorBoard stores right edges, so an empty bin ending at the
    minimum leads)."""
    flat = values.detach().reshape(-1).double().cpu()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        raise ValueError("cannot make a histogram of no finite values")
    low, high = flat.min().item(), flat.max().item()
    if high > low:
        counts = torch.histc(flat, bins=bins, min=low, max=high).tolist()
        limits = torch.linspace(low, high, bins + 1).tolist()
    else:  # all values equal: one bin
        counts, limits = [float(flat.numel())], [low, low]
    return HistogramProto(min=low, max=high, num=flat.numel(), sum=flat.sum().item(),
                          sum_squares=flat.dot(flat).item(), bucket_limit=limits,
                          bucket=[0.0, *counts])


class EventWriter:
    """Appends ``Event`` records to a new ``events.out.tfevents.*`` file in ``log_dir``.

    Args:
        log_dir: the folder (created if needed).
        purge_step: resuming at this step: TensorBoard hides this folder's
            earlier events with steps ``>= purge_step`` (as ``SummaryWriter``'s).
    """

    def __init__(self, log_dir: str | os.PathLike, *, purge_step: int | None = None):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / (f"events.out.tfevents.{int(time.time()):010d}."
                               f"{socket.gethostname()}.{os.getpid()}.{next(_uid)}")
        self._file = self.path.open("wb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(Event(wall_time=time.time(), step=purge_step,
                              session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + _masked_crc(header) + data + _masked_crc(data))

    def add(self, step: int, scalars: Mapping[str, float] = {},
            histograms: Mapping[str, torch.Tensor] = {}, wall_time: float | None = None) -> None:
        """One record at ``step`` with every scalar and histogram, by tag."""
        values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()]
        values += [Summary.Value(tag=tag, histo=histogram(v)) for tag, v in histograms.items()]
        self._write(Event(wall_time=time.time() if wall_time is None else wall_time,
                          step=int(step), summary=Summary(value=values)))

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        self._file.close()


__all__ = ["EventWriter", "HISTOGRAM_BINS", "histogram"]
