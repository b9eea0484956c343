"""Which stages an export writes by default: those the checkpoint was trained with."""

import pytest

from mner.export.stage_choice import (
    STAGE_NAMES,
    parse_stage_names,
    pictures_in_training,
    select_for_checkpoint,
)

TEXT_ONLY = {"train_args": {"images_dir": None, "seed": 1}}
WITH_PICTURES = {"train_args": {"images_dir": "/data/twitter2017/images", "seed": 1}}
CONVERTED = {"converted_from": {"weights": "pytorch_model.bin", "unmapped": [], "missing": []}}
RANDOM = {"random_weights": {"preset": "tiny", "seed": 0}}


def test_the_names_are_the_stage_table_in_its_order():
    from mner.export.stages import STAGES

    assert STAGE_NAMES == tuple(STAGES) == ("detector", "vision", "tagger")


@pytest.mark.parametrize(
    "payload, pictures, words",
    [
        (TEXT_ONLY, False, "without --images"),
        (WITH_PICTURES, True, "with --images /data/twitter2017/images"),
        (CONVERTED, True, "IIE4MNER"),
        (RANDOM, None, "random weights"),
        ({}, None, "does not record"),
        ({"train_args": {"seed": 3}}, None, "does not record"),  # an mner-train record without the field
    ],
)
def test_pictures_in_training_reads_what_the_checkpoint_records(payload, pictures, words):
    seen, how = pictures_in_training(payload)
    assert seen is pictures and words in how


def test_a_text_only_model_exports_the_tagger_alone_by_default():
    selection = select_for_checkpoint(None, TEXT_ONLY)
    assert selection.stages == ("tagger",) and selection.chosen_by == "checkpoint"
    assert selection.untrained_image_stages == () and selection.warning() is None
    assert selection.to_json() == {
        "stages": ["tagger"],
        "chosen_by": "checkpoint",
        "pictures_in_training": False,
        "reason": "trained by mner-train without --images, so the model never saw a picture: the tagger only",
        "untrained_image_stages": [],
    }


@pytest.mark.parametrize("payload", [WITH_PICTURES, CONVERTED, RANDOM, {}])
def test_other_models_export_every_stage_by_default(payload):
    selection = select_for_checkpoint(None, payload)
    assert selection.stages == STAGE_NAMES and selection.warning() is None
    assert selection.reason.endswith(": all stages")


def test_naming_image_stages_for_a_text_only_model_exports_them_with_a_warning():
    selection = select_for_checkpoint("tagger,vision,detector", TEXT_ONLY)
    assert selection.stages == STAGE_NAMES and selection.chosen_by == "--stages"
    assert selection.untrained_image_stages == ("detector", "vision")
    warning = selection.warning()
    assert warning == ("exporting detector and vision for a model that never saw a picture (trained by mner-train "
                       "without --images): pictures sent to this bundle reach a tagger whose image path only ever had "
                       "masked, all-zero features; leave out --stages for a text-only bundle")  # fmt: skip
    assert selection.reason == "named by --stages; trained by mner-train without --images, so the model never saw a picture"
    assert selection.to_json()["untrained_image_stages"] == ["detector", "vision"]
    assert select_for_checkpoint(["vision", "tagger"], TEXT_ONLY).untrained_image_stages == ("vision",)


@pytest.mark.parametrize("payload", [WITH_PICTURES, CONVERTED, RANDOM])
def test_naming_image_stages_for_other_models_does_not_warn(payload):
    selection = select_for_checkpoint("detector,vision,tagger", payload)
    assert selection.stages == STAGE_NAMES and selection.warning() is None


def test_naming_the_tagger_for_a_text_only_model_does_not_warn():
    selection = select_for_checkpoint("tagger", TEXT_ONLY)
    assert selection.stages == ("tagger",) and selection.chosen_by == "--stages" and selection.warning() is None


def test_stage_names_are_parsed_into_pipeline_order():
    assert parse_stage_names("tagger, detector") == ("detector", "tagger")
    assert parse_stage_names(["vision"]) == ("vision",)


@pytest.mark.parametrize("names", ["tagger,ocr", "", " , ", []])
def test_unknown_or_no_stage_names_are_refused(names):
    with pytest.raises(ValueError, match=r"non-empty subset of \['detector', 'vision', 'tagger'\]"):
        parse_stage_names(names)
    with pytest.raises(ValueError, match="non-empty subset"):
        select_for_checkpoint(names, TEXT_ONLY)
