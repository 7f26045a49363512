"""Event files from EventWriter / RunLogger, read back by TensorBoard's own reader."""
import math
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from onepass.experiment.events import EventWriter, _masked_crc, histogram
from onepass.experiment.logging import RunLogger


def accumulate(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_checksum_matches_tensorboards():
    for data in (b"", b"a", os.urandom(7), os.urandom(300)):
        assert int.from_bytes(_masked_crc(data), "little") == masked_crc32c(data)


def test_scalars_and_histograms_read_back(tmp_path):
    writer = EventWriter(tmp_path)
    values = torch.tensor([1e-3, 2e-3, 2e-3, 5e-3, 1e-2], dtype=torch.float64)
    for step in (10, 20, 30):
        writer.add(step, {"Loss/Training": 1.0 / step, "Hyperparameters/lr": 0.1 * step},
                   {"Hyperparameters/lr_hist": values * step})
    writer.close()
    acc = accumulate(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["Hyperparameters/lr", "Loss/Training"]
    loss = acc.Scalars("Loss/Training")
    assert [e.step for e in loss] == [10, 20, 30]
    assert [e.value for e in loss] == pytest.approx([0.1, 0.05, 1 / 30], rel=1e-6)
    (h10, _, h30) = acc.Histograms("Hyperparameters/lr_hist")
    assert h30.step == 30
    hist = h30.histogram_value
    assert hist.num == 5 and sum(hist.bucket) == 5
    assert hist.min == pytest.approx(0.03) and hist.max == pytest.approx(0.3)
    assert hist.sum == pytest.approx(float(values.sum() * 30))
    assert hist.sum_squares == pytest.approx(float((values * 30).pow(2).sum()))
    assert hist.bucket_limit[-1] == pytest.approx(0.3) and hist.bucket[0] == 0
    assert hist.bucket[1] == 1 and hist.bucket[-1] == 1   # 0.03 first, 0.3 last


def test_histogram_of_equal_values_and_of_nothing_finite():
    proto = histogram(torch.full((4,), 0.5))
    assert proto.num == 4 and list(proto.bucket) == [0.0, 4.0]
    for values in (torch.empty(0), torch.tensor([math.nan, math.inf])):
        with pytest.raises(ValueError, match="no finite values"):
            histogram(values)


def test_purge_step_hides_events_after_a_resume(tmp_path):
    first = EventWriter(tmp_path)
    for step in range(1, 11):
        first.add(step, {"Loss/Training": float(step)})
    first.close()
    resumed = EventWriter(tmp_path, purge_step=6)
    for step in range(6, 9):
        resumed.add(step, {"Loss/Training": 100.0 + step})
    resumed.close()
    events = accumulate(tmp_path).Scalars("Loss/Training")
    assert [(e.step, e.value) for e in events] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 106.0), (7, 107.0), (8, 108.0)]


def test_run_logger_writes_losses_and_per_weight_histograms(tmp_path):
    lr = [torch.full((3, 2), 0.01), torch.tensor([0.02, math.nan])]
    logger = RunLogger(tmp_path, {"lr": lr, "momentum": 0.9}, tensorboard=True)
    logger.log({"step": 10, "train_loss": 0.5, "val_loss": None, "test_loss": 0.25,
                "test_loss_unnormalised": 2.5, "wall_time_s": 1.0}, {"lr": lr, "momentum": 0.9})
    logger.close()
    acc = accumulate(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == [
        "Hyperparameters/lr_mean", "Hyperparameters/momentum", "Loss/Test",
        "Loss/Test_Unnormalised", "Loss/Training"]
    assert acc.Scalars("Loss/Test_Unnormalised")[0].value == pytest.approx(2.5)
    assert acc.Scalars("Hyperparameters/momentum")[0].value == pytest.approx(0.9)
    (hist,) = acc.Histograms("Hyperparameters/lr")
    assert hist.step == 10 and hist.histogram_value.num == 7   # NaN left out
