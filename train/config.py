"""MGCMT's configuration and the training presets, without torch.

The console commands read ``PRESETS``, ``TRAINING_DEFAULTS`` and the ablation choices
for their ``--help``, which must answer in well under a second: importing torch and
transformers takes seconds, so this module imports neither (``ModelConfig.bert_config``
imports transformers when it is called). ``mner.train.model`` re-exports every name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mner.runtime import clikit

if TYPE_CHECKING:
    from transformers import BertConfig

SPLITS = clikit.SPLITS  # train.txt, valid.txt, test.txt of a --data folder (runtime.conll.SPLIT_FILES' keys)

AUGMENTATION_MODES = ("add", "gate", "none")
FUSION_MODES = ("gate_cat", "objects_only", "image_only")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, no paths. Defaults are the paper's best TWITTER setting on bert-base-cased."""

    # text encoder: bert-base-cased sizes
    vocab_size: int = 28996  # bert-base-cased word-piece vocabulary
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1  # BERT's, also used by every cross-modal block
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    max_length: int = 64  # word-pieces per window incl. [CLS]/[SEP]; the paper's max_seq_length

    # tags: <pad>, O, B-/I- per type, X, [CLS], [SEP] (13 for 4 types) and the span task's 7
    num_tags: int = 13
    num_aux_tags: int = 7

    # semantic augmentation: each word's 4 nearest word2vec neighbours, softmax-mixed
    augmentation: str = "add"  # add (best) | gate | none: how the vectors join BERT's output
    augmentation_dim: int = 200  # the paper's word2vec size
    augmentation_rows: int = 2  # table rows (row 0 zeros, row 1 unknown words); set from the table

    # image: ResNet-152 7x7 grid and detector labels
    grid_dim: int = 2048  # ResNet-152 layer4 channels
    grid_cells: int = 49  # 7 x 7
    num_objects: int = 5  # the paper's obj_num
    object_vocab_size: int = 85  # the reference's table: 0 = none, 1..80 COCO, 4 rows never indexed

    # cross-modal blocks: one layer each, the paper's layer_num1..3
    txt2img_layers: int = 1
    img2txt_layers: int = 1
    txt2txt_layers: int = 1

    # char-CNN over each word's characters joined to BERT's input embeddings (an ablation; off in the
    # paper's best configuration, IIE4MNER use_char_cnn=1). Its sizes are the reference's.
    char_cnn: bool = False
    char_vocab_size: int = 5  # [PAD], [UNK], [X], [XC], [XS] + characters seen in training; set from the data
    max_word_chars: int = 12  # the reference's max_wordlen
    char_embedding_dim: int = 128  # the reference's char_input_dim

    fusion: str = "gate_cat"  # gate_cat (best) | objects_only | image_only
    fusion_dropout: float = 0.5
    aux_task: bool = True  # the auxiliary entity-span CRF (seg_task=0)
    aux_loss_weight: float = 0.5  # the reference's beta

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATION_MODES:
            raise ValueError(f"augmentation must be one of {AUGMENTATION_MODES}, got {self.augmentation!r}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.augmentation_rows < 2:
            raise ValueError(f"augmentation_rows must be >= 2 (zero row + unknown row), got {self.augmentation_rows}")
        if self.max_length > self.max_position_embeddings:
            raise ValueError(
                f"max_length ({self.max_length}) exceeds max_position_embeddings ({self.max_position_embeddings})"
            )
        for name in ("num_tags", "num_aux_tags", "num_objects", "txt2img_layers", "img2txt_layers", "txt2txt_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """``paper`` (bert-base-cased sizes) or ``tiny`` (a 4-layer, 256-wide model for tests and the demo)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; this mner knows {sorted(known)}")
        return cls(**values)

    def bert_config(self) -> "BertConfig":
        from transformers import BertConfig  # here, not at the top: --help must not wait for transformers

        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            layer_norm_eps=self.layer_norm_eps,
            type_vocab_size=2,
            # eager attention: one readable graph that exports to ONNX as plain MatMul/Softmax
            attn_implementation="eager",
        )


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    # Small enough to train on TWITTER-2017 on two CPU cores in minutes; every module of
    # the paper's model is still there, only narrower and shallower.
    "tiny": ModelConfig(
        vocab_size=8000,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=128,
    ),
}


# Without --preset, mner-train uses "tiny": it learns from random weights on any machine in
# minutes (TWITTER-2017 on two CPU cores: dev F1 0.57 in 10 epochs). "paper" is BERT-base
# sized and only useful with a pretrained BERT (--bert), which a user must fetch first; from
# random weights it scores about 0 on small data, so it must be asked for by name.
DEFAULT_PRESET = "tiny"


@dataclass(frozen=True)
class TrainingDefaults:
    learning_rate: float
    batch_size: int
    epochs: int
    warmup_proportion: float = 0.1  # the reference's warmup_proportion
    weight_decay: float = 0.01  # BertAdam's, not applied to biases and LayerNorm


# The paper's run: lr 3e-5, batch 24, 64 word-pieces, 75 epochs (IIE4MNER config.epoch_num) on a
# pretrained BERT. The tiny preset learns from scratch, so it needs a much larger step.
TRAINING_DEFAULTS = {
    "paper": TrainingDefaults(learning_rate=3e-5, batch_size=24, epochs=75),
    "tiny": TrainingDefaults(learning_rate=1e-3, batch_size=32, epochs=10),
}
