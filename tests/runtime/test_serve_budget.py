"""mner.runtime.serve_budget: what a request asks of the worker, counted before it is queued, and refused
by the first limit it breaks. The fake pipeline of test_pipeline.py (a word-piece per character);
test_serve_budget_server.py checks the 422s of a real server."""

from __future__ import annotations

import pytest
from test_pipeline import fake_pipeline

from mner.runtime.pipeline import Post
from mner.runtime.serve_budget import OverBudget, PostCost, picture_pixels, post_costs
from runtime_samples import jpeg, png_header_claiming

LIMITS = {"max_post_pieces": 100, "max_request_pieces": 250, "max_request_pixels": 5000}


def costs(posts, **limits):
    return post_costs(fake_pipeline(), posts, [f"posts[{i}]" for i in range(len(posts))], **{**LIMITS, **limits})


def test_each_post_costs_its_pieces_windows_and_pixels():
    posts = [Post("ab cd"), Post("a " * 100), Post("x", jpeg(40, 60, 0)), Post("y", b"not a picture")]
    got = costs(posts, max_request_pieces=250)
    assert got == [PostCost(4, 1, 0), PostCost(100, 3, 0), PostCost(1, 1, 2400), PostCost(1, 1, 0)]
    assert got[1].windows == fake_pipeline().tag([posts[1]])[0].windows


def test_a_post_over_max_post_pieces_is_refused_naming_it_and_the_limit():
    with pytest.raises(OverBudget, match=r"^posts\[1\] has 101 word-pieces \(3 tagger windows\), over the limit of 100 "
                                         r"per post$") as refused:  # fmt: skip
        costs([Post("fine"), Post("a " * 101), Post("b " * 500)])
    assert (refused.value.limit, refused.value.value) == ("max_post_pieces", 100)


def test_a_request_over_max_request_pieces_is_refused_at_the_post_that_breaks_it():
    with pytest.raises(OverBudget, match=r"^posts\[0\]..posts\[2\] have 300 word-pieces, over the limit of 250 per "
                                         r"request$") as refused:  # fmt: skip
        costs([Post("a " * 100)] * 3 + [Post("a " * 100)] * 50)
    assert (refused.value.limit, refused.value.value) == ("max_request_pieces", 250)
    assert len(costs([Post("a " * 100), Post("a " * 100), Post("a " * 50)])) == 3  # exactly at the limit


def test_pictures_over_max_request_pixels_are_refused_alone_or_together():
    picture = jpeg(40, 60, 0)  # 2,400 pixels
    with pytest.raises(OverBudget, match=r"^posts\[0\]..posts\[2\] have pictures of 7200 pixels, over the limit of 5000 "
                                         r"per request$") as refused:  # fmt: skip
        costs([Post("a", picture), Post("b", picture), Post("c", picture)])
    assert (refused.value.limit, refused.value.value) == ("max_request_pixels", 5000)
    with pytest.raises(OverBudget, match=r"^the post has a picture of 10000 pixels, over the limit of 5000 per request$"):
        post_costs(fake_pipeline(), [Post("a", png_header_claiming(100, 100))], ["the post"], **LIMITS)


def test_picture_pixels_reads_the_header_only():
    assert picture_pixels(None) == 0 and picture_pixels(b"") == 0
    assert picture_pixels(b"not a picture") == 0  # the pipeline gives that post its error
    assert picture_pixels(png_header_claiming(50_000, 40_000)) == 2_000_000_000  # a bomb's claim, never decoded


def test_post_costs_needs_a_name_per_post():
    with pytest.raises(ValueError, match="got 2 posts but 1 names"):
        post_costs(fake_pipeline(), [Post("a"), Post("b")], ["the post"], **LIMITS)
