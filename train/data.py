"""Read CoNLL-format MNER data (TWITTER-2015/2017 as released with UMT).

One post per block: an `IMGID:<id>` line (the image is `<id>.jpg`), one
`token<TAB>tag` line per word, a blank line. Posts without an IMGID line are
accepted with image_id None ("no image"). The reader is the runtime's
(``mner.runtime.conll``), so training and ``mner-tag --conll`` read files alike: every
token is kept as the file has it (a lone U+00A0 is a word with its tag), and
``check_entity_types`` refuses data whose entity types a model does not know.
"""

from __future__ import annotations

from mner.runtime.bundle import sha256_file
from mner.runtime.conll import IMAGE_PREFIX, ConllPost as Post, check_entity_types, entity_types, read_conll

__all__ = ["IMAGE_PREFIX", "Post", "check_entity_types", "entity_types", "read_conll", "sha256_file"]
