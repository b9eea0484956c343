"""Which texts the pipeline cannot tag as sent, and why: one sentence naming the character and where it is.

Only one class of character is refused: UTF-16 surrogates (U+D800..U+DFFF). A Python str
can hold one -- ``json.loads('"\\ud800"')`` gives it, and a tweet cut in the middle of an
emoji often ends with half a pair -- but it is not a character and has no UTF-8 form, so
the tokenizer (Rust, UTF-8 strings only) cannot take it. Dropping it would move every
offset after it, and replacing it (with U+FFFD) would tag a text other than the one sent,
so the post gets an error naming it instead, and the caller decides.

Everything else odd is tagged, with offsets into the text as sent (probed through
``Pipeline.tag`` on an exported bundle; runtime/pipeline.py's docstring has what each
class gives): NUL and other C0/C1 controls, non-characters (U+FFFE, U+FDD0, U+10FFFF),
private-use and unassigned code points, BIDI embeddings, overrides, isolates and marks
(U+202A..U+202E, U+2066..U+2069, U+200F), zero-width characters (U+200B..U+200D, U+2060,
U+FEFF), tag characters, U+FFFD.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def is_high_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udbff"


def is_low_surrogate(char: str) -> bool:
    return "\udc00" <= char <= "\udfff"


def text_problem(text: str, name: str = "text") -> str | None:
    """None when ``text`` can be tagged as it is; otherwise why not, in one sentence naming the first
    offending character by code point and by its 0-based character offset (as entity offsets count).

    ``name`` starts the sentence (a request field such as "posts[1].text")."""
    if not isinstance(text, str):
        raise ValueError(f"text_problem() checks a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")  # the common case, in C: nothing to report
        return None
    except UnicodeEncodeError:
        pass
    found = [m.start() for m in _SURROGATE.finditer(text)]
    assert found, "only surrogates fail to encode as UTF-8"
    # A problem is a lone surrogate or a pair: the low half of a pair is not counted again.
    problems = [i for i in found if not (is_low_surrogate(text[i]) and i > 0 and is_high_surrogate(text[i - 1]))]
    first = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    char = text[first]
    if is_high_surrogate(char) and first + 1 < len(text) and is_low_surrogate(text[first + 1]):
        # Both halves, but as two code points: UTF-16 decoded as if it were UCS-2.
        pair = f"U+{ord(char):04X} U+{ord(text[first + 1]):04X}"
        return (f"{name} has a UTF-16 surrogate pair {pair} at character {first}{more}, two code points where one "
                "character belongs, which cannot be encoded as UTF-8; decode the text properly first (in Python: "
                "s.encode('utf-16', 'surrogatepass').decode('utf-16'))")  # fmt: skip
    return (f"{name} has a lone surrogate U+{ord(char):04X} at character {first}{more}; half of a UTF-16 pair is not "
            "a character and cannot be encoded as UTF-8 (a post cut inside an emoji often ends with one): remove it "
            "or replace it with U+FFFD")  # fmt: skip
