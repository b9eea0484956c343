"""The training history beside best.pt: history.jsonl (one line per epoch) and history.png.

history.jsonl is what a user reads, plots or greps after a run without unpickling a
checkpoint: one JSON object per finished epoch, in order, e.g.::

    {"epoch": 3, "loss": 0.41, "dev_precision": 0.52, "dev_recall": 0.47, "dev_f1": 0.49,
     "learning_rate": 0.00067, "seconds": 212.4, "elapsed_s": 655.0}

``loss`` is the mean training loss of the epoch, ``learning_rate`` the rate of its last step,
``seconds`` the epoch's wall time (training steps and the dev evaluation), ``elapsed_s`` the
run's wall time so far (across ``--resume``). The same records live in last.pt, which is what
``--resume`` continues from; the file is rewritten from them on resume, so an epoch that was
logged but not saved before an interruption is not listed twice.

history.png draws the loss and the dev P/R/F1 per epoch. matplotlib is imported when the
figure is drawn (Agg, no display), not when this module is.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from mner.runtime.files import write_atomically

logger = logging.getLogger(__name__)

HISTORY_JSONL = "history.jsonl"
HISTORY_PNG = "history.png"


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")


def write_history(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with one line per record (at start, and from last.pt's records on resume)."""
    data = b"".join(_line(record) for record in records)
    write_atomically(path, lambda file: file.write(data))


def append_history(path: str | Path, record: dict[str, Any]) -> None:
    """Add one epoch's line as soon as the epoch is done, so a running job's file is current."""
    with open(path, "ab") as file:
        file.write(_line(record))


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a history.jsonl; ValueError naming the line that is not a JSON object."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            message = f"{path}:{number}: expected one JSON object per line, got {line[:80]!r} ({error})"
            raise ValueError(message) from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def plot_history(path: str | Path, records: list[dict[str, Any]], title: str = "") -> bool:
    """Draw history.png (training loss above, dev P/R/F1 below, by epoch). False if matplotlib is missing."""
    if not records:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a training server; must precede pyplot's import
        from matplotlib import pyplot as plt
    except ImportError:
        logger.warning("%s not drawn: matplotlib is not installed (pip install 'mner[train]')", path)
        return False

    epochs = [record["epoch"] for record in records]
    # constrained layout and bbox_inches="tight": no title, label or legend is clipped
    figure, (loss_axes, f1_axes) = plt.subplots(2, 1, sharex=True, figsize=(8, 6), layout="constrained")
    loss_axes.plot(epochs, [record["loss"] for record in records], marker="o", color="tab:red")
    loss_axes.set_ylabel("training loss (mean per epoch)")
    loss_axes.set_ylim(bottom=0)
    loss_axes.grid(alpha=0.3)
    curves = (("dev_f1", "F1", "-"), ("dev_precision", "precision", "--"), ("dev_recall", "recall", ":"))
    for key, label, style in curves:
        if all(key in record for record in records):  # records from before P/R were kept have F1 only
            f1_axes.plot(epochs, [record[key] for record in records], style, marker="o", label=label)
    best = max(records, key=lambda record: record["dev_f1"])  # the epoch best.pt holds
    f1_axes.plot([best["epoch"]], [best["dev_f1"]], "*", color="black", markersize=12,
                 label=f"best F1 {best['dev_f1']:.4f} (epoch {best['epoch']}: best.pt)")  # fmt: skip
    f1_axes.set_ylabel("dev entity score (micro)")
    f1_axes.set_xlabel("epoch")
    f1_axes.set_ylim(-0.03, 1.03)  # a little room: a score of exactly 0 or 1 is drawn whole, not cut by the frame
    f1_axes.grid(alpha=0.3)
    # outside the axes: a legend inside would hide curves near 0 or 1; savefig's tight box keeps it whole
    f1_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    f1_axes.xaxis.get_major_locator().set_params(integer=True)
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, lambda file: file.write(buffer.getvalue()))
    return True
