"""Entity-level precision/recall/F1.

``evaluate_entities``: conlleval (seqeval default) semantics over BIO word tags. The
scoring is the runtime's (``mner.runtime.conll``), so ``mner-eval`` and ``mner-tag
--conll`` report the same numbers for the same tags.

``evaluate_reference``: the MGCMT authors' scoring (IIE4MNER ``run_mtmner_crf.py``), for
``mner-eval --decoding reference``. Their published figures (TWITTER-2017 86.09,
TWITTER-2015 74.57) are the "micro avg" row of seqeval's ``classification_report`` in
its default mode, over word tags taken at each word's first piece from an unconstrained
decode: such a tag may be X, [CLS], [SEP] or PAD, which seqeval reads in its own way
(e.g. an X right before an entity tag becomes an entity of type "_", a false positive;
an X before O is dropped). seqeval itself does the scoring here, so those quirks are
reproduced exactly rather than re-implemented.
"""

from __future__ import annotations

import warnings

from mner.runtime.conll import evaluate_entities, format_report
from mner.runtime.tags import PAD

__all__ = ["evaluate_entities", "evaluate_reference", "format_report", "REFERENCE_SCORER"]

REFERENCE_SCORER = "seqeval classification_report, default mode, micro avg (as IIE4MNER)"
# The authors' label map calls index 0 "PAD" where our scheme says "<pad>".
_REFERENCE_NAMES = {PAD: "PAD"}


def evaluate_reference(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Scores as the authors computed theirs; same dict shape as ``evaluate_entities``.

    ``pred`` holds the tag names the reference decoding read at each word (any tag of the
    scheme, not only BIO ones). ``per_type`` has a row for every type seqeval finds in gold
    or predictions, so a quirk type such as "_" shows up with support 0, as in their reports.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} posts but pred has {len(pred)}")
    for i, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"post {i}: gold has {len(gold_tags)} tags but pred has {len(pred_tags)}")
    try:
        from seqeval.metrics import classification_report
    except ImportError as error:  # pragma: no cover - seqeval is a dependency
        raise ValueError("--decoding reference scores with seqeval, which is not installed (pip install seqeval)") from error
    pred = [[_REFERENCE_NAMES.get(tag, tag) for tag in tags] for tags in pred]
    with warnings.catch_warnings():
        # "X seems not to be NE tag" and zero-division warnings: expected here, and the
        # authors' runs ignored them too.
        warnings.simplefilter("ignore")
        report = classification_report(gold, pred, output_dict=True)

    def scores(row: dict) -> dict:
        return {"precision": float(row["precision"]), "recall": float(row["recall"]), "f1": float(row["f1-score"]),
                "support": int(row["support"])}  # fmt: skip

    summaries = ("micro avg", "macro avg", "weighted avg")
    return {
        "micro": scores(report["micro avg"]),
        "per_type": {name: scores(row) for name, row in sorted(report.items()) if name not in summaries},
        "scorer": REFERENCE_SCORER,
    }
