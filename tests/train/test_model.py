"""MGCMT: shapes, masking, missing images/objects, ablations, CRF maths, checkpoints, parameter counts."""

import dataclasses

import numpy as np
import pytest
import torch

from mner.train.crf import CRF
from mner.train.model import MGCMT, ModelConfig, parameter_table

# Narrower than the tiny preset so each test builds its model in milliseconds.
SMALL = ModelConfig.preset(
    "tiny", vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    augmentation_rows=20,
)  # fmt: skip


def make_inputs(config: ModelConfig, batch: int = 3, length: int = 9, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    aug_ids = torch.randint(0, config.augmentation_rows, (batch, length), generator=generator) * attention_mask
    grid = torch.randn(batch, config.grid_cells, config.grid_dim, generator=generator)
    image_mask = torch.tensor([1, 0, 1][:batch] + [1] * max(0, batch - 3))
    object_ids = torch.randint(0, 81, (batch, config.num_objects), generator=generator)
    object_ids[1] = 0  # a post without objects
    return dict(input_ids=input_ids, attention_mask=attention_mask, aug_ids=aug_ids, grid=grid,
                image_mask=image_mask, object_ids=object_ids)  # fmt: skip


def build(config: ModelConfig = SMALL, seed: int = 0) -> MGCMT:
    torch.manual_seed(seed)
    model = MGCMT(config).eval()
    if config.augmentation != "none":
        model.set_augmentation_table(torch.randn(config.augmentation_rows, config.augmentation_dim))
    return model


def test_shapes_and_finite():
    model = build()
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        emissions, aux = model(**inputs)
    assert emissions.shape == (3, 9, SMALL.num_tags)
    assert aux.shape == (3, 9, SMALL.num_aux_tags)
    assert torch.isfinite(emissions).all() and torch.isfinite(aux).all()


def test_padding_does_not_change_real_positions():
    model = build()
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        before, _ = model(**inputs)
        changed = dict(inputs, input_ids=inputs["input_ids"].clone())
        changed["input_ids"][inputs["attention_mask"] == 0] = 7  # garbage under the mask
        after, _ = model(**changed)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(before[real], after[real], rtol=1e-5, atol=1e-5)


def test_post_without_image_ignores_the_grid_and_has_no_nan():
    model = build()
    inputs = make_inputs(SMALL)
    inputs["image_mask"] = torch.zeros(3, dtype=torch.long)
    inputs["object_ids"] = torch.zeros(3, SMALL.num_objects, dtype=torch.long)
    inputs["grid"] = torch.zeros_like(inputs["grid"])
    with torch.no_grad():
        emissions, aux = model(**inputs)
        other_grid, _ = model(**dict(inputs, grid=torch.randn_like(inputs["grid"]) * 100))
    assert torch.isfinite(emissions).all() and torch.isfinite(aux).all()
    torch.testing.assert_close(emissions, other_grid)  # a post without image ignores whatever grid arrives


def test_a_training_batch_without_pictures_skips_the_grid_product_exactly(monkeypatch):
    """The shortcut for all-zero grids gives the same emissions, loss and gradients, bit for bit."""
    inputs = make_inputs(SMALL)
    inputs["image_mask"] = torch.zeros(3, dtype=torch.long)
    tags = torch.randint(1, SMALL.num_tags, (3, 9), generator=torch.Generator().manual_seed(1))
    aux_tags = torch.randint(0, SMALL.num_aux_tags, (3, 9), generator=torch.Generator().manual_seed(2))

    def step(model):
        torch.manual_seed(3)  # the same dropout masks in both runs
        emissions, aux = model(**inputs)
        loss = model.loss(emissions, aux, tags, aux_tags, inputs["attention_mask"])
        loss.backward()
        return emissions.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    shortcut_model = build().train()
    calls = []
    original = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: calls.append(x.shape) or original(self, x))
    shortcut = step(shortcut_model)
    assert (3, SMALL.grid_cells, SMALL.grid_dim) not in calls  # the (B, 49, 2048) product was skipped

    full_model = build().train()
    monkeypatch.setattr(MGCMT, "_project_grid", lambda self, linear, grid, zero_grid: linear(grid))
    full = step(full_model)
    assert torch.equal(shortcut[0], full[0])
    assert shortcut[1].keys() == full[1].keys()  # the grid weights get their (zero) gradient either way
    for name in full[1]:
        assert torch.equal(shortcut[1][name], full[1][name]), name
    assert not shortcut[1]["grid_to_text.weight"].any()


def test_image_changes_emissions_when_present():
    model = build()
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        first, _ = model(**inputs)
        second, _ = model(**dict(inputs, grid=torch.randn_like(inputs["grid"])))
    assert not torch.allclose(first[0], second[0])  # post 0 has an image
    torch.testing.assert_close(first[1], second[1])  # post 1 has none


def test_objects_are_masked_by_id_zero():
    model = build()
    inputs = make_inputs(SMALL)
    inputs["object_ids"][0] = torch.tensor([3, 0, 0, 0, 0])
    with torch.no_grad():
        first, _ = model(**inputs)
        # Embedding row 0 is "none": changing it must not matter where ids are 0... it only feeds masked keys.
        model.object_embeddings.weight.data[0] += 1.0
        second, _ = model(**inputs)
    torch.testing.assert_close(first[0], second[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"augmentation": "add"},
        {"augmentation": "gate"},
        {"augmentation": "none"},
        {"fusion": "objects_only"},
        {"fusion": "image_only"},
        {"aux_task": False},
        {"char_cnn": True, "char_vocab_size": 30},
    ],
)
def test_each_ablation_trains_one_step(overrides):
    config = dataclasses.replace(SMALL, **overrides)
    model = build(config).train()
    inputs = make_inputs(config)
    if config.char_cnn:
        inputs["char_ids"] = torch.randint(0, config.char_vocab_size, (3, 9, config.max_word_chars))
    tags = torch.randint(0, config.num_tags, (3, 9))
    aux_tags = torch.randint(0, config.num_aux_tags, (3, 9))
    emissions, aux = model(**inputs)
    loss = model.loss(emissions, aux, tags, aux_tags, inputs["attention_mask"])
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.classifier.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    aux_grad = model.aux_classifier.weight.grad
    if config.aux_task:
        assert aux_grad is not None and aux_grad.abs().sum() > 0
    else:
        assert aux_grad is None or aux_grad.abs().sum() == 0
    if overrides.get("augmentation") == "none":
        assert not hasattr(model, "augmentation_table")


def test_same_seed_same_model_and_outputs():
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        a, _ = build(seed=3)(**inputs)
        b, _ = build(seed=3)(**inputs)
        c, _ = build(seed=4)(**inputs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"augmentation": "concat"}, "augmentation must be one of"),
        ({"fusion": "sum"}, "fusion must be one of"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
        ({"augmentation_rows": 1}, "augmentation_rows must be >= 2"),
        ({"max_length": 1000}, "exceeds max_position_embeddings"),
        ({"num_objects": 0}, "num_objects must be >= 1"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **overrides)


def test_preset_and_dict_validation():
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**SMALL.to_dict(), "fusion_method": 2})
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL


def test_augmentation_table_validation():
    model = build()
    with pytest.raises(ValueError, match="augmentation table must be"):
        model.set_augmentation_table(torch.zeros(3, 3))
    none = build(dataclasses.replace(SMALL, augmentation="none"))
    with pytest.raises(ValueError, match="augmentation='none'"):
        none.set_augmentation_table(torch.zeros(20, 200))


def test_augmentation_rows_reach_the_text():
    model = build()
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        first, _ = model(**inputs)
        model.augmentation_table[1:] += 1.0
        second, _ = model(**inputs)
        third, _ = model(**dict(inputs, aug_ids=torch.zeros_like(inputs["aug_ids"])))
        model.augmentation_table[1:] += 1.0
        fourth, _ = model(**dict(inputs, aug_ids=torch.zeros_like(inputs["aug_ids"])))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(third, fourth)  # row 0 (no word) is untouched


# --- CRF -------------------------------------------------------------------------------------------


def test_crf_nll_equals_pytorch_crf():
    torchcrf = pytest.importorskip("torchcrf")
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        batch, length, num_tags = 4, 7, 5
        ours = CRF(num_tags)
        reference = torchcrf.CRF(num_tags, batch_first=True)
        reference.load_state_dict(ours.state_dict())
        emissions = torch.randn(batch, length, num_tags, generator=generator)
        tags = torch.randint(0, num_tags, (batch, length), generator=generator)
        lengths = torch.randint(1, length + 1, (batch,), generator=generator)
        mask = torch.arange(length)[None, :] < lengths[:, None]
        expected = -reference(emissions, tags, mask=mask, reduction="mean")
        torch.testing.assert_close(ours.neg_log_likelihood(emissions, tags, mask), expected, rtol=1e-5, atol=1e-5)


def test_crf_validation():
    crf = CRF(3)
    emissions = torch.zeros(2, 4, 3)
    tags = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="num_tags must be positive"):
        CRF(0)
    with pytest.raises(ValueError, match=r"emissions must be \(B, L, 3\)"):
        crf.neg_log_likelihood(torch.zeros(2, 4, 5), tags, mask)
    with pytest.raises(ValueError, match="tags and mask must be"):
        crf.neg_log_likelihood(emissions, tags[:, :3], mask)
    bad = mask.clone()
    bad[1, 0] = False
    with pytest.raises(ValueError, match=r"mask\[:, 0\] must be true"):
        crf.neg_log_likelihood(emissions, tags, bad)


# --- parameter counts against the reference ----------------------------------------------------------


def _bert_layer(hidden: int, intermediate: int) -> int:
    # q, k, v, attention output (4 H x H + bias), 2 LayerNorms, feed-forward in and out
    return 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + hidden * intermediate + intermediate + intermediate * hidden + hidden


def test_paper_preset_counts_match_the_reference_modules():
    """The counts IIE4MNER's MSCMT has for bert-base-cased, 13 labels, 7 aux labels (best configuration)."""
    config = ModelConfig.preset("paper")
    counts = dict(parameter_table(MGCMT(config)))
    hidden, layer = 768, _bert_layer(768, 3072)
    assert layer == 7_087_872  # one bert-base layer, a known figure
    expected = {
        "bert": 22_665_216 + 12 * layer,  # embeddings (28996 + 512 + 2 rows, LayerNorm) + 12 layers, no pooler
        "object_embeddings": 85 * hidden,
        "grid_to_text": 2048 * hidden + hidden,
        "grid_to_text_v2": 2048 * hidden + hidden,
        "classifier": hidden * 13 + 13,
        "aux_classifier": hidden * 7 + 7,
        "crf": 13 * 13 + 2 * 13,
        "aux_crf": 7 * 7 + 2 * 7,
        "augmentation_linear": 200 * hidden + hidden,
        "image_gate": 2 * hidden * hidden + hidden,
        "object_gate": 2 * hidden * hidden + hidden,
        "fused_linear": 2 * hidden * hidden + hidden,
        "output_weight": 2 * hidden * hidden,
        "output_bias": hidden,
    }
    for block in ("text_aux_block", "text_main_block", "grid_self", "grid_self_v2", "objects_self", "objects_self_v2",
                  "text_to_grid", "grid_to_text_attention", "text_to_attended_grid", "objects_to_text",
                  "text_to_objects", "text_to_attended_objects"):  # fmt: skip
        expected[block] = layer
    assert counts == expected


def test_char_cnn_needs_char_ids_and_uses_them():
    config = dataclasses.replace(SMALL, char_cnn=True, char_vocab_size=30)
    model = build(config)
    inputs = make_inputs(config)
    with pytest.raises(ValueError, match="char_ids"):
        model(**inputs)
    chars = torch.randint(5, 30, (3, 9, config.max_word_chars))
    with torch.no_grad():
        first, _ = model(**inputs, char_ids=chars)
        second, _ = model(**inputs, char_ids=torch.flip(chars, dims=[-1]))
    assert not torch.allclose(first[0], second[0])
    # the reference's char_cnn sizes: embedding V x 128, convolutions 2/3/4 x 32 filters, 96 -> 100 -> H
    expected = 30 * 128 + sum(128 * 32 * k + 32 for k in (2, 3, 4)) + 96 * 100 + 100 + 100 * 32 + 32
    assert sum(p.numel() for p in model.char_cnn.parameters()) == expected
