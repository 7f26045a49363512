"""The one framework-private name the integrations still read, kept here, behind
a version guard, with a one-line error that names the fix.

Everything else they use is public: Lightning's callback hooks, module hooks
and ``trainer`` properties; ``transformers``' ``TrainerCallback`` events and
accelerate's ``send_to_device``; the optimizer's ``val_loss``,
``grad_scaler`` and ``skip_non_finite`` attributes.
"""
from __future__ import annotations

from typing import Any

# Lightning versions this file was written against: [first, before).
LIGHTNING_TESTED = ((2, 0), (3, 0))


def _version(text: str) -> tuple[int, int]:
    parts = [int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2]]
    return tuple(parts + [0] * (2 - len(parts)))   # type: ignore[return-value]


def lightning_fit_val_loader(trainer: Any) -> Any:
    """The validation data of ``trainer.fit(model, train, val)`` (or the
    datamodule's or module's ``val_dataloader()``) at ``on_fit_start``.

    Lightning's public ``trainer.val_dataloaders`` is ``None`` until its
    validation loop first runs (never, with ``limit_val_batches=0``), so this
    reads the fit loop's ``_data_source``. Returns ``None`` when there is none."""
    import lightning

    fix = ("pass the validation data to the callback: OnepassCallback(val_dataloader=...)")
    version = _version(lightning.__version__)
    if not LIGHTNING_TESTED[0] <= version < LIGHTNING_TESTED[1]:
        raise ValueError(f"OnepassCallback: Lightning {lightning.__version__} is outside the versions whose "
                         f"validation data it can find ({'.'.join(map(str, LIGHTNING_TESTED[0]))} to before "
                         f"{'.'.join(map(str, LIGHTNING_TESTED[1]))}); {fix}")
    try:
        source = trainer.fit_loop.epoch_loop.val_loop._data_source
        if source.instance is None or not source.is_defined():
            return None
        return source.dataloader()
    except AttributeError as error:
        raise ValueError(f"OnepassCallback: Lightning {lightning.__version__} keeps its validation data "
                         f"elsewhere ({error}); {fix}") from None
