"""The test tree's own rule: no two test modules share a file name.

tests/ has no __init__.py files, so pytest imports each module by its bare name; a second
``test_cli.py`` in another folder stops the whole run at collection ("import file
mismatch"), which is how ``make test`` once failed on a fresh clone.
"""

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_modules_share_a_name():
    places = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        places[path.name].append(str(path.relative_to(TESTS)))
    shared = {name: paths for name, paths in places.items() if len(paths) > 1}
    assert not shared, f"test modules sharing a name (rename one of each): {shared}"
