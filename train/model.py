"""MGCMT: Multi-Granularity Cross-Modality representation learning for NER (Liu et al., 2022).

The whole model, top to bottom. What it computes follows the authors' best
configuration (IIE4MNER ``MSCMT`` with use_char_cnn=1, aug_before=1, aug_gate=1,
ffusion_method=2, main_cat=0, alpha_seg=1, seg_task=0):

    text   BERT(word-pieces) + Linear(augmentation rows)       -> dropout -> S     (B, L, H)
           S -> self-attention block "aux"  -> aux classifier  -> aux CRF (span B/I/O tags)
           S -> self-attention block "main" -> M                                   (B, L, H)
    grid   Linear(2048->H) -> self-attention -> M attends to it          -> G1     (B, L, H)
           Linear(2048->H) -> self-attention -> attends to M -> M attends to that -> G2
    objs   label embeddings -> self-attention -> M attends to it         -> O1     (B, L, H)
           label embeddings -> self-attention -> attends to M -> M attends to that -> O2
    fuse   gate(G1, G2), gate(O2, O1) -> concat -> dropout(0.5) -> ReLU(Linear) -> F
           concat(M, F) @ W + b -> classifier -> emissions -> CRF

Every attention block is a BERT layer (attention, residual + LayerNorm,
feed-forward, residual + LayerNorm); "A attends to B" means queries from A,
keys and values from B. Masks are additive with a finite -10000 (FP16 safe).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertModel

from mner.train.config import AUGMENTATION_MODES, FUSION_MODES, PRESETS, ModelConfig  # noqa: F401 (re-exported)
from mner.train.crf import CRF

MASK_NEGATIVE = -10000.0  # finite, so FP16 graphs and fully-masked rows never produce NaN


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) 1 = attend, 0 = ignore  ->  (B, 1, 1, K) additive: 0 or -10000."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASK_NEGATIVE


class AttentionBlock(nn.Module):
    """One BERT layer whose queries and keys may come from different sequences.

    Parameter names follow BERT's (query/key/value, output dense + LayerNorm,
    intermediate, output) so a reference checkpoint maps onto it one to one.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = hidden // config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)  # (B, h, len, d)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """queries (B, Lq, H), keys (B, Lk, H), key_mask additive (B, 1, 1, Lk) -> (B, Lq, H)."""
        q = self._heads(self.query(queries))
        k = self._heads(self.key(keys))
        v = self._heads(self.value(keys))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + key_mask  # (B, h, Lq, Lk)
        probs = self.attention_dropout(F.softmax(scores, dim=-1))
        context = (probs @ v).transpose(1, 2).reshape(queries.shape)  # (B, Lq, H)
        attended = self.attention_norm(self.dropout(self.attention_output(context)) + queries)
        hidden = F.gelu(self.intermediate(attended))
        return self.output_norm(self.dropout(self.output(hidden)) + attended)


class CrossEncoder(nn.Module):
    """A stack of AttentionBlocks: queries attend to the same keys at every layer."""

    def __init__(self, config: ModelConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AttentionBlock(config) for _ in range(num_layers))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, keys, key_mask)
        return queries


class CharCNN(nn.Module):
    """The reference's char_cnn: character embeddings, convolutions of widths 2/3/4 with tanh and
    max-pooling over the word, then Linear(96, 100) -> ReLU -> Linear(100, H). One vector per piece."""

    KERNELS = (2, 3, 4)
    FILTERS = 32

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.char_vocab_size, config.char_embedding_dim, padding_idx=0)
        nn.init.xavier_normal_(self.embedding.weight)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(config.char_embedding_dim, self.FILTERS, kernel, padding=kernel // 2) for kernel in self.KERNELS
        )
        self.dropout = nn.Dropout(0.25)
        self.hidden = nn.Linear(self.FILTERS * len(self.KERNELS), 100)
        self.output = nn.Linear(100, config.hidden_size)

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids (B, L, W) int64 -> (B, L, H)."""
        batch, length, width = char_ids.shape
        chars = self.embedding(char_ids.reshape(batch * length, width)).transpose(1, 2)  # (B*L, E, W)
        pooled = [self.dropout(torch.tanh(conv(chars)).amax(dim=-1)) for conv in self.convolutions]  # each (B*L, 32)
        hidden = self.dropout(F.relu(self.hidden(torch.cat(pooled, dim=-1))))
        return self.output(hidden).view(batch, length, -1)


class Gate(nn.Module):
    """g = sigmoid(a W1^T + b W2^T + bias); out = g * a + (1 - g) * b  (the reference's fusion gates)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight_a = nn.Parameter(torch.empty(hidden, hidden))
        self.weight_b = nn.Parameter(torch.empty(hidden, hidden))
        self.bias = nn.Parameter(torch.empty(hidden))
        bound = 1.0 / math.sqrt(hidden)  # the reference's reset_parameters
        for parameter in (self.weight_a, self.weight_b, self.bias):
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(a @ self.weight_a.t() + b @ self.weight_b.t() + self.bias)
        return gate * a + (1.0 - gate) * b


class MGCMT(nn.Module):
    def __init__(self, config: ModelConfig, bert: BertModel | None = None) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size

        # Modules the reference creates before applying BERT's initialiser (normal(0, 0.02)).
        self.bert = bert if bert is not None else BertModel(config.bert_config(), add_pooling_layer=False)
        self.object_embeddings = nn.Embedding(config.object_vocab_size, hidden)
        self.text_aux_block = AttentionBlock(config)  # reference: self_attention
        self.text_main_block = AttentionBlock(config)  # reference: self_attention_v2
        self.grid_to_text = nn.Linear(config.grid_dim, hidden)  # vismap2text
        self.grid_to_text_v2 = nn.Linear(config.grid_dim, hidden)  # vismap2text_v2
        self.text_to_grid = CrossEncoder(config, config.txt2img_layers)  # txt2img_attention
        self.grid_to_text_attention = CrossEncoder(config, config.img2txt_layers)  # img2txt_attention
        self.text_to_attended_grid = CrossEncoder(config, config.txt2txt_layers)  # txt2txt_attention
        self.classifier = nn.Linear(hidden, config.num_tags)
        self.aux_classifier = nn.Linear(hidden, config.num_aux_tags)
        bert_initialised = [
            self.object_embeddings, self.text_aux_block, self.text_main_block, self.grid_to_text,
            self.grid_to_text_v2, self.text_to_grid, self.grid_to_text_attention, self.text_to_attended_grid,
            self.classifier, self.aux_classifier,
        ]  # fmt: skip
        if bert is None:
            bert_initialised.append(self.bert)
        for module in bert_initialised:
            module.apply(self._bert_init)

        # Modules the reference adds afterwards keep PyTorch's default initialisation.
        self.crf = CRF(config.num_tags)
        self.aux_crf = CRF(config.num_aux_tags)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.augmentation != "none":
            self.augmentation_linear = nn.Linear(config.augmentation_dim, hidden)  # maug_linear
            # The table is data, not a trained weight: saved with the model, baked into the ONNX graph.
            self.register_buffer(
                "augmentation_table", torch.zeros(config.augmentation_rows, config.augmentation_dim), persistent=True
            )
            if config.augmentation == "gate":
                self.augmentation_gate = Gate(hidden)  # aug_w1, aug_w2, aug_bias
        self.grid_self = AttentionBlock(config)  # img2img_attention
        self.grid_self_v2 = AttentionBlock(config)  # img2img_attention_v2
        self.objects_self = AttentionBlock(config)  # obj2obj_attention
        self.objects_self_v2 = AttentionBlock(config)  # obj2obj_attention_v2
        self.objects_to_text = CrossEncoder(config, 1)  # obj2txt_attention
        self.text_to_objects = CrossEncoder(config, 1)  # txt2obj_attention
        self.text_to_attended_objects = CrossEncoder(config, 1)  # txt2obj_attention_v2
        if config.char_cnn:
            self.char_cnn = CharCNN(config)  # reference: bert.embeddings.char_cnn_model
            self.char_linear = nn.Linear(2 * hidden, hidden)  # reference: bert.embeddings.char_cnn_linear
        self.fusion_dropout = nn.Dropout(config.fusion_dropout)
        if config.fusion == "gate_cat":
            self.image_gate = Gate(hidden)  # fus1
            self.object_gate = Gate(hidden)  # fus2
            self.fused_linear = nn.Linear(2 * hidden, hidden)  # fus3_linear
        else:
            self.single_gate = Gate(hidden)  # fus1 in the reference's methods 7 and 8
        self.output_weight = nn.Parameter(torch.empty(2 * hidden, hidden))  # fusion_w
        self.output_bias = nn.Parameter(torch.empty(hidden))  # fusion_bias
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.output_weight, -bound, bound)
        nn.init.uniform_(self.output_bias, -bound, bound)

    @staticmethod
    def _bert_init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_augmentation_table(self, table: torch.Tensor) -> None:
        if self.config.augmentation == "none":
            raise ValueError("this model was configured with augmentation='none'; it takes no table")
        expected = (self.config.augmentation_rows, self.config.augmentation_dim)
        if tuple(table.shape) != expected:
            raise ValueError(f"augmentation table must be {expected}, got {tuple(table.shape)}")
        self.augmentation_table.copy_(table)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        aug_ids: torch.Tensor,
        grid: torch.Tensor,
        image_mask: torch.Tensor,
        object_ids: torch.Tensor,
        char_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Emissions of the main and the auxiliary CRF.

        input_ids (B, L) int64 word-pieces; attention_mask (B, L) 1 = real piece;
        aug_ids (B, L) int64 augmentation-table rows (0 where no word starts);
        grid (B, 49, 2048) float ResNet features; image_mask (B,) 1 = the post has an image;
        object_ids (B, K) int64 COCO ids 1..80, 0 = none;
        char_ids (B, L, W) int64 each piece's characters, only with config.char_cnn.
        Returns emissions (B, L, num_tags) and aux emissions (B, L, num_aux_tags).
        """
        dtype = grid.dtype
        # "No image" is a property of the post, not of whatever tensor arrived: zero its grid.
        grid = grid * image_mask[:, None, None].to(dtype)  # (B, 49, 2048)
        text_mask = additive_mask(attention_mask, dtype)  # (B, 1, 1, L)
        grid_mask = additive_mask(image_mask[:, None].expand(-1, grid.size(1)), dtype)  # (B, 1, 1, 49)
        object_mask = additive_mask((object_ids != 0).long(), dtype)  # (B, 1, 1, K)

        # BERT takes the prepared 4-D additive mask as is: no data-dependent mask shortcuts in the graph.
        if self.config.char_cnn:
            if char_ids is None:
                raise ValueError("this model was configured with char_cnn=True: char_ids (B, L, W) are required")
            text = self.bert.encoder(self._char_embeddings(input_ids, char_ids), attention_mask=text_mask)[0]
        else:
            text = self.bert(input_ids=input_ids, attention_mask=text_mask).last_hidden_state  # (B, L, H)
        if self.config.augmentation != "none":
            augmentation = self.augmentation_linear(self.augmentation_table[aug_ids])  # (B, L, H)
            if self.config.augmentation == "add":
                text = text + augmentation
            else:
                text = self.augmentation_gate(text, augmentation)
        text = self.dropout(text)

        aux_text = self.text_aux_block(text, text, text_mask)
        aux_emissions = self.aux_classifier(aux_text)  # (B, L, Ta)
        main_text = self.text_main_block(text, text, text_mask)  # (B, L, H)

        fused = self._fuse_image(main_text, text_mask, grid, grid_mask, object_ids, object_mask)  # (B, L, H)
        final = torch.cat([main_text, fused], dim=-1) @ self.output_weight + self.output_bias  # (B, L, H)
        return self.classifier(final), aux_emissions

    def _char_embeddings(self, input_ids: torch.Tensor, char_ids: torch.Tensor) -> torch.Tensor:
        """BERT's input embeddings with the char-CNN joined before their LayerNorm, as the reference does."""
        embeddings = self.bert.embeddings
        positions = torch.arange(input_ids.size(1), device=input_ids.device)[None, :]
        summed = (embeddings.word_embeddings(input_ids) + embeddings.position_embeddings(positions)
                  + embeddings.token_type_embeddings(torch.zeros_like(input_ids)))  # (B, L, H)  # fmt: skip
        joined = self.char_linear(self.dropout(torch.cat([summed, self.char_cnn(char_ids)], dim=-1)))
        return embeddings.dropout(embeddings.LayerNorm(joined))

    def _fuse_image(self, main_text, text_mask, grid, grid_mask, object_ids, object_mask) -> torch.Tensor:
        fusion = self.config.fusion
        if fusion in ("gate_cat", "image_only"):
            # grid granularity: text -> grid, and grid -> text -> text
            zero_grid = self.training and not bool(grid.any())  # asked once for both projections
            grid_h = self._project_grid(self.grid_to_text, grid, zero_grid)  # (B, 49, H)
            grid_h = self.grid_self(grid_h, grid_h, grid_mask)
            text_on_grid = self.text_to_grid(main_text, grid_h, grid_mask)  # (B, L, H)
            grid_h2 = self._project_grid(self.grid_to_text_v2, grid, zero_grid)
            grid_h2 = self.grid_self_v2(grid_h2, grid_h2, grid_mask)
            grid_on_text = self.grid_to_text_attention(grid_h2, main_text, text_mask)  # (B, 49, H)
            # The reference masks these keys with the grid's mask: one row per grid cell.
            text_on_attended_grid = self.text_to_attended_grid(main_text, grid_on_text, grid_mask)  # (B, L, H)
        if fusion in ("gate_cat", "objects_only"):
            # object granularity: text -> objects, and objects -> text -> text
            objects = self.object_embeddings(object_ids)  # (B, K, H)
            objects_h = self.objects_self(objects, objects, object_mask)
            text_on_objects = self.text_to_objects(main_text, objects_h, object_mask)  # (B, L, H)
            objects_h2 = self.objects_self_v2(objects, objects, object_mask)
            objects_on_text = self.objects_to_text(objects_h2, main_text, text_mask)  # (B, K, H)
            text_on_attended_objects = self.text_to_attended_objects(main_text, objects_on_text, object_mask)

        if fusion == "image_only":
            return self.single_gate(text_on_grid, text_on_attended_grid)
        if fusion == "objects_only":
            return self.single_gate(text_on_attended_objects, text_on_objects)
        image = self.image_gate(text_on_grid, text_on_attended_grid)
        objects_fused = self.object_gate(text_on_attended_objects, text_on_objects)
        fused = self.fusion_dropout(torch.cat([image, objects_fused], dim=-1))
        return F.relu(self.fused_linear(fused))

    def _project_grid(self, linear: nn.Linear, grid: torch.Tensor, zero_grid: bool) -> torch.Tensor:
        """linear(grid), (B, 49, 2048) -> (B, 49, H).

        A training batch without any image has an all-zero grid (``zero_grid``), whose product
        with the weight is exactly zero: the projection is then exactly its bias, and the
        (B*49, 2048) x (2048, H) product and its weight gradient (a quarter of a tiny-preset
        step on text-only data) are skipped. Only in training: the exported graph keeps one
        data-independent path.
        """
        if zero_grid:
            # 0 * sum(weight) keeps the weight in the graph with its exact, all-zero gradient,
            # so AdamW moves it (moments, weight decay) just as it would after the full product.
            return linear.bias.expand(grid.size(0), grid.size(1), -1) + 0.0 * linear.weight.sum()
        return linear(grid)

    def loss(
        self,
        emissions: torch.Tensor,
        aux_emissions: torch.Tensor,
        tags: torch.Tensor,
        aux_tags: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Main CRF NLL + aux_loss_weight x auxiliary CRF NLL (each a mean over the batch)."""
        loss = self.crf.neg_log_likelihood(emissions, tags, attention_mask)
        if self.config.aux_task:
            loss = loss + self.config.aux_loss_weight * self.aux_crf.neg_log_likelihood(
                aux_emissions, aux_tags, attention_mask
            )
        return loss


def parameter_table(model: MGCMT) -> list[tuple[str, int]]:
    """(top-level module or parameter name, parameter count) in definition order."""
    rows = [(name, sum(p.numel() for p in module.parameters())) for name, module in model.named_children()]
    rows += [(name, p.numel()) for name, p in model.named_parameters(recurse=False)]
    return [row for row in rows if row[1] > 0]
