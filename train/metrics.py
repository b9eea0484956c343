"""Entity-level precision/recall/F1 with conlleval (seqeval default) semantics.

The scoring is the runtime's (``mner.runtime.conll``), so ``mner-eval`` and
``mner-tag --conll`` report the same numbers for the same tags.
"""

from __future__ import annotations

from mner.runtime.conll import evaluate_entities, format_report

__all__ = ["evaluate_entities", "format_report"]
