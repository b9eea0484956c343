"""mner-convert: import the authors' released IIE4MNER (MSCMT) checkpoints into a best.pt.

Their state_dict naming maps onto ours module by module (see ``reference_key_map``);
their label order (<pad> implied at 0, then O, B-MISC, I-MISC, B-PER, ...) is permuted
into ours (types sorted); their augmentation table and word vocabulary become our
table and vocabulary. Keys their code creates but the best configuration never uses
(char-CNN, the pooler, the other fusion variants' weights) are reported, not loaded.

Label sets: their code has one label list for TWITTER-2015 and 2017 (REFERENCE_LABELS);
its reader renames 2015's B-/I-OTHER to B-/I-MISC, so a 2015 model's MISC rows are
OTHER. Given the data (``vocab_data_dir``), the fourth type takes the data's name
(``reference_labels_for``), so a converted 2015 checkpoint predicts OTHER and scores
against OTHER; an explicit label list whose types miss one of the data's is refused.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from mner.runtime.conll import entity_types, read_conll
from mner.runtime.tags import PAD, TagScheme, parse_bio
from mner.runtime.text import TextEncoder
from mner.train.checkpoint import save_checkpoint
from mner.train.model import MGCMT, ModelConfig

# Inside one attention layer: reference suffix -> ours (BertLayer and BertCrossAttentionLayer alike).
_LAYER_PARTS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
}
# Single-layer self-attention encoders (BertSelfEncoder) and cross encoders (BertCrossEncoder).
_SELF_BLOCKS = {
    "self_attention": "text_aux_block",
    "self_attention_v2": "text_main_block",
    "img2img_attention": "grid_self",
    "img2img_attention_v2": "grid_self_v2",
    "obj2obj_attention": "objects_self",
    "obj2obj_attention_v2": "objects_self_v2",
}
_CROSS_BLOCKS = {
    "txt2img_attention": "text_to_grid",
    "img2txt_attention": "grid_to_text_attention",
    "txt2txt_attention": "text_to_attended_grid",
    "obj2txt_attention": "objects_to_text",
    "txt2obj_attention": "text_to_objects",
    "txt2obj_attention_v2": "text_to_attended_objects",
}
_DIRECT = {
    "object_embeddings.weight": "object_embeddings.weight",
    "vismap2text.weight": "grid_to_text.weight",
    "vismap2text.bias": "grid_to_text.bias",
    "vismap2text_v2.weight": "grid_to_text_v2.weight",
    "vismap2text_v2.bias": "grid_to_text_v2.bias",
    "maug_linear.weight": "augmentation_linear.weight",
    "maug_linear.bias": "augmentation_linear.bias",
    "fus1_w1": "image_gate.weight_a",
    "fus1_w2": "image_gate.weight_b",
    "fus1_bias": "image_gate.bias",
    "fus2_w1": "object_gate.weight_a",
    "fus2_w2": "object_gate.weight_b",
    "fus2_bias": "object_gate.bias",
    "fus3_linear.weight": "fused_linear.weight",
    "fus3_linear.bias": "fused_linear.bias",
    "fusion_w": "output_weight",
    "fusion_bias": "output_bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
    "aux_classifier.weight": "aux_classifier.weight",
    "aux_classifier.bias": "aux_classifier.bias",
}
_CRF = ("start_transitions", "end_transitions", "transitions")
# Their label list (run_mtmner_crf.py, MSCMT_NERProcessor.get_labels), the same for both datasets.
REFERENCE_LABELS = ("O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "X", "[CLS]", "[SEP]")
_NAMED_TYPES = {"PER", "ORG", "LOC"}  # the types with slots of their own; the fourth sits in MISC's
_STRUCTURAL_LABELS = ("O", "X", "[CLS]", "[SEP]")
_BERT_UNUSED = re.compile(r"^bert\.(pooler\.|embeddings\.(char_cnn_model|char_cnn_linear|aug_linear)\.)")


def reference_key_map(reference_key: str) -> str | None:
    """Our state_dict key for a reference key, or None when the best configuration does not use it."""
    if _BERT_UNUSED.match(reference_key):
        return None
    if reference_key.startswith("bert."):
        # Their BertModel uses the original BERT names, as does transformers'; LayerNorm gamma/beta are weight/bias.
        return reference_key.replace(".gamma", ".weight").replace(".beta", ".bias")
    if reference_key in _DIRECT:
        return _DIRECT[reference_key]
    for crf in ("crf", "aux_crf"):
        for name in _CRF:
            if reference_key == f"{crf}.{name}":
                return reference_key
    match = re.match(r"^(\w+?)\.layer\.(\d+)\.(.+)\.(weight|bias)$", reference_key)
    if match:
        block, layer, part, kind = match.groups()
        if part in _LAYER_PARTS:
            if block in _SELF_BLOCKS and layer == "0":
                return f"{_SELF_BLOCKS[block]}.{_LAYER_PARTS[part]}.{kind}"
            if block in _CROSS_BLOCKS:
                return f"{_CROSS_BLOCKS[block]}.layers.{layer}.{_LAYER_PARTS[part]}.{kind}"
    return None


def our_to_reference_keys(model: MGCMT, reference_keys: list[str]) -> dict[str, str]:
    """ours -> reference, for the keys that map; used by tests to round-trip."""
    return {reference_key_map(k): k for k in reference_keys if reference_key_map(k) is not None}


def reference_splits(data_dir: Path) -> list[Path]:
    """train, dev and test of a data folder, named as theirs (train, dev, test) or as ours (*.txt, valid.txt)."""
    paths = []
    for name in ("train", "dev", "test"):
        path = data_dir / name
        if not path.is_file():
            path = data_dir / f"{'valid' if name == 'dev' else name}.txt"
        if not path.is_file():
            raise ValueError(f"{data_dir} lacks the {name} split (looked for {name} and {name}.txt)")
        paths.append(path)
    return paths


def reference_vocabulary(data_dir: Path) -> dict[str, int]:
    """The authors' word -> row map (utils.build_vocab): words of train/dev/test by descending count, from row 2."""
    counts: Counter[str] = Counter()
    for path in reference_splits(data_dir):
        for line in path.read_text(encoding="utf-8").splitlines():
            # Their parse, quirks included, because their table's rows follow it: strip()
            # turns a "\xa0<TAB>O" line into "O", counted as the word "O".
            line = line.strip()
            if line and not line.startswith("IMGID:"):
                counts[line.split("\t")[0]] += 1
    return {word: row + 2 for row, (word, _) in enumerate(counts.most_common())}


def reference_labels_for(types: set[str]) -> list[str]:
    """Their label list with the data's fourth type (OTHER for TWITTER-2015) in their MISC slot.

    Their model has PER, ORG, LOC and one more type; data naming two types beyond PER,
    ORG and LOC cannot be theirs and raises ValueError. Without a fourth type, MISC stays.
    """
    others = sorted(set(types) - _NAMED_TYPES)
    if len(others) > 1:
        raise ValueError(
            f"the authors' models have the entity types PER, ORG, LOC and one more (MISC in TWITTER-2017, OTHER in "
            f"TWITTER-2015); the data has {sorted(types)}, with {others} beyond PER, ORG and LOC"
        )
    fourth = others[0] if others else "MISC"
    return [label.replace("-MISC", f"-{fourth}") for label in REFERENCE_LABELS]


def _label_types(labels: list[str]) -> set[str]:
    return {parse_bio(label)[1] for label in labels if label not in _STRUCTURAL_LABELS}


def resolve_reference_labels(labels: list[str] | None, data_dir: Path | None) -> list[str]:
    """The label list to convert with: the data's (``reference_labels_for``), an explicit one
    checked against the data, or without data the given list, else REFERENCE_LABELS."""
    if data_dir is None:
        return list(labels) if labels is not None else list(REFERENCE_LABELS)
    data_types = set().union(*(entity_types(read_conll(path)) for path in reference_splits(data_dir)))
    if labels is None:
        return reference_labels_for(data_types)
    missing = data_types - _label_types(labels)
    if missing:
        raise ValueError(
            f"the labels name the entity types {sorted(_label_types(labels))} but the data in {data_dir} has "
            f"{sorted(data_types)} ({sorted(missing)} missing); leave the labels out to take the types from the data"
        )
    return list(labels)


def read_word_vocabulary(path: Path) -> dict[str, int]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        vocab = json.loads(text)
        if not isinstance(vocab, dict):
            raise ValueError(f"{path}: expected a JSON object word -> row, got {type(vocab).__name__}")
        return {str(k): int(v) for k, v in vocab.items()}
    return {word: row for row, word in enumerate(text.splitlines()) if word}


@dataclass
class ConversionReport:
    unmapped: list[str] = field(default_factory=list)  # reference keys not loaded
    missing: list[str] = field(default_factory=list)  # our keys the reference lacked


def label_permutation(reference_labels: list[str], scheme: TagScheme) -> np.ndarray:
    """index[i] = the reference's row for our tag i (the reference's 0 is padding)."""
    reference_index = {PAD: 0, **{label: i + 1 for i, label in enumerate(reference_labels)}}
    missing = [tag for tag in scheme.tags if tag not in reference_index]
    if missing or len(reference_index) != scheme.num_tags:
        raise ValueError(
            f"reference labels {reference_labels} do not match the tags {scheme.tags} (missing {missing})"
        )
    return np.array([reference_index[tag] for tag in scheme.tags], dtype=np.int64)


def convert_state_dict(
    reference: dict[str, torch.Tensor], model: MGCMT, permutation: np.ndarray
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename and permute a reference state_dict into one that loads into `model`."""
    report = ConversionReport()
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    order = torch.from_numpy(permutation)
    for key, value in reference.items():
        target = reference_key_map(key)
        if target is None or target not in ours:
            report.unmapped.append(key)
            continue
        if key.startswith("classifier.") or key.startswith("crf.start") or key.startswith("crf.end"):
            value = value[order]
        elif key == "crf.transitions":
            value = value[order][:, order]
        if tuple(value.shape) != tuple(ours[target].shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {target} {tuple(ours[target].shape)}")
        converted[target] = value.detach().clone()
    report.missing = sorted(k for k in ours if k not in converted and k != "augmentation_table")
    return converted, report


def convert_reference_checkpoint(
    weights_path: Path,
    bert_dir: Path,
    aug_table_path: Path,
    out_path: Path,
    reference_labels: list[str] | None = None,
    word_vocab_path: Path | None = None,
    vocab_data_dir: Path | None = None,
) -> ConversionReport:
    """Write a best.pt from their weights; labels None: from ``vocab_data_dir``'s data, else theirs (MISC)."""
    try:
        reference = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{weights_path} is not a readable PyTorch state_dict: {error}") from error
    if not isinstance(reference, dict) or "classifier.weight" not in reference:
        raise ValueError(f"{weights_path} is not an MSCMT state_dict (no classifier.weight)")
    config_file = next((bert_dir / n for n in ("bert_config.json", "config.json") if (bert_dir / n).is_file()), None)
    if config_file is None:
        raise ValueError(f"{bert_dir} has neither bert_config.json nor config.json")
    bert_config = BertConfig.from_json_file(str(config_file))
    bert_config._attn_implementation = "eager"

    reference_labels = resolve_reference_labels(reference_labels, vocab_data_dir)
    scheme = TagScheme(tuple(_label_types(reference_labels)))
    permutation = label_permutation(reference_labels, scheme)

    table = np.load(aug_table_path).astype(np.float32)  # (V, dim): their row i = their word index i
    if table.ndim != 2:
        raise ValueError(f"{aug_table_path}: expected a 2-D augmentation table, got shape {table.shape}")
    vocab = read_word_vocabulary(word_vocab_path) if word_vocab_path else reference_vocabulary(vocab_data_dir)
    # Their rows 0 ([PAD]) and 1 ([UNK]) hold random vectors drawn once; ours keeps row 0 zero (no word)
    # and row 1 for unknown words, so their [UNK] row becomes our unknown row.
    table[0] = 0.0
    vocab = {word: row for word, row in vocab.items() if row >= 2 and word not in ("[PAD]", "[UNK]")}
    if vocab and max(vocab.values()) >= len(table):
        raise ValueError(f"the word vocabulary reaches row {max(vocab.values())} but {aug_table_path} has {len(table)} rows")

    config = ModelConfig(
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        num_hidden_layers=bert_config.num_hidden_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        max_position_embeddings=bert_config.max_position_embeddings,
        num_tags=scheme.num_tags,
        augmentation_dim=table.shape[1],
        augmentation_rows=table.shape[0],
        object_vocab_size=int(reference["object_embeddings.weight"].shape[0]),
    )
    model = MGCMT(config, bert=BertModel(bert_config, add_pooling_layer=False))
    converted, report = convert_state_dict(reference, model, permutation)
    model.load_state_dict(converted, strict=False)
    model.set_augmentation_table(torch.from_numpy(table))
    encoder = TextEncoder.from_bert_dir(bert_dir, aug_vocab=vocab, max_length=config.max_length)
    save_checkpoint(out_path, model, scheme, encoder,
                    converted_from={"weights": str(weights_path), "unmapped": report.unmapped, "missing": report.missing})  # fmt: skip
    return report
