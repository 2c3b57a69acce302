"""``RUN/metrics.jsonl`` (one JSON object per line) and ``RUN/curves.png``.

Records, each with ``"type"``:

* ``"iteration"``: ``{"epoch", "iteration", "step", "lr", "loss", "data_s", "compute_s"}``; ``epoch`` is 1-based
  (the number of the checkpoint file it leads to), ``iteration`` 1-based within the epoch, ``step`` counts
  iterations over the run; ``loss`` is PySlowFast's logged ``loss.item()``; ``data_s`` the seconds spent waiting
  for the batch, ``compute_s`` forward + backward + step.
* ``"epoch"``: ``{"epoch", "loss" (mean over the epoch), "iterations", "seconds"}``.
* ``"eval"``: ``{"epoch", "mAP", "per_class": {action_id: AP or null}, "keyframes", "detections"}``.
* ``"start"``: run facts once per start or resume, ``epoch`` = epochs already done (samples, skipped rows,
  keyframes dropped for data errors, the initialisation report, model size, device, threads).

A resumed run first drops the records of epochs after its checkpoint (they are redone), so the file reads as one
uninterrupted run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from ava_pipeline.writers import atomic_output


class MetricsLog:
    """Appends records to ``metrics.jsonl``, flushed line by line."""

    def __init__(self, path: str | Path, *, keep_epochs_before: Optional[int] = None):
        """``keep_epochs_before``: on resume, the first epoch number (1-based) to be redone; records of that
        epoch and later are removed first. None starts a new file."""
        self.path = Path(path)
        if keep_epochs_before is None or not self.path.is_file():
            kept = []
        else:
            kept = [r for r in read_records(self.path) if r.get("epoch", 0) < keep_epochs_before]
        with atomic_output(self.path) as temporary:
            temporary.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record_type: str, **values) -> None:
        self._file.write(json.dumps({"type": record_type, **values}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a last line cut by a kill is skipped)."""
    path = Path(path)
    records = []
    for line in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> None:
    """``curves.png``: training loss per iteration (thin) and per epoch (mean), and the val frame-mAP per
    evaluation, against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    records = read_records(metrics_path)
    steps = [r for r in records if r.get("type") == "iteration"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    evals = [r for r in records if r.get("type") == "eval" and r.get("mAP") is not None]
    figure, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    if steps:
        per_epoch = {r["epoch"]: r["iterations"] for r in epochs}
        x = [r["epoch"] - 1 + r["iteration"] / max(per_epoch.get(r["epoch"], r["iteration"]), 1) for r in steps]
        loss_axis.plot(x, [r["loss"] for r in steps], color="tab:blue", alpha=0.3, linewidth=0.8,
                       label="loss per iteration")
    if epochs:
        loss_axis.plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], "o-", color="tab:blue",
                       label="mean loss per epoch")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("BCE loss", color="tab:blue")
    if evals:
        map_axis = loss_axis.twinx()
        map_axis.plot([r["epoch"] for r in evals], [100 * r["mAP"] for r in evals], "s-", color="tab:red",
                      label="val frame-mAP")
        map_axis.set_ylabel("val frame-mAP@0.5 (%)", color="tab:red")
        map_axis.set_ylim(0, max(100.0, math.ceil(max(100 * r["mAP"] for r in evals))))
    loss_axis.set_title("ava-train")
    loss_axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(out_path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
