"""Console entry points of training: mner-train, mner-eval, mner-convert (thin: parse, then call the library).

``--help`` answers in well under a second: this module imports click, the shared CLI kit
and torch-free modules only (``mner.train.config``, not ``mner.train.model``); torch,
transformers and the trainer are imported inside the commands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mner.runtime import clikit
from mner.runtime.extras import require_extra
from mner.train.config import AUGMENTATION_MODES, DEFAULT_PRESET, FUSION_MODES, PRESETS, SPLITS, TRAINING_DEFAULTS
from mner.train.detector_choice import CLI_CHOICES as DETECTOR_CHOICES
from mner.train.detector_choice import DEFAULT_DETECTOR
from mner.train.detector_choice import cli_help as detector_help

# Where each of our top-level modules sits in the reference (IIE4MNER my_bert/mner_modeling.py, MSCMT).
REFERENCE_NAMES = {
    "bert": "bert (embeddings + encoder; the pooler is unused and left out)",
    "object_embeddings": "object_embeddings",
    "text_aux_block": "self_attention",
    "text_main_block": "self_attention_v2",
    "grid_to_text": "vismap2text",
    "grid_to_text_v2": "vismap2text_v2",
    "text_to_grid": "txt2img_attention",
    "grid_to_text_attention": "img2txt_attention",
    "text_to_attended_grid": "txt2txt_attention",
    "classifier": "classifier",
    "aux_classifier": "aux_classifier",
    "crf": "crf",
    "aux_crf": "aux_crf",
    "augmentation_linear": "maug_linear",
    "augmentation_gate": "aug_w1 + aug_w2 + aug_bias",
    "grid_self": "img2img_attention",
    "grid_self_v2": "img2img_attention_v2",
    "objects_self": "obj2obj_attention",
    "objects_self_v2": "obj2obj_attention_v2",
    "objects_to_text": "obj2txt_attention",
    "text_to_objects": "txt2obj_attention",
    "text_to_attended_objects": "txt2obj_attention_v2",
    "image_gate": "fus1_w1 + fus1_w2 + fus1_bias",
    "object_gate": "fus2_w1 + fus2_w2 + fus2_bias",
    "single_gate": "fus1_w1 + fus1_w2 + fus1_bias",
    "fused_linear": "fus3_linear",
    "char_cnn": "bert.embeddings.char_cnn_model",
    "char_linear": "bert.embeddings.char_cnn_linear",
    "output_weight": "fusion_w",
    "output_bias": "fusion_bias",
}


def _setup_logging(verbose: bool) -> None:
    """mner's own INFO lines (epochs, warnings, progress lines off a terminal); other libraries' at WARNING.

    -v: everything at DEBUG, the libraries' too.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")  # fmt: skip
    logging.getLogger("mner").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Except matplotlib's font search: hundreds of lines scoring every installed font per plot.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.INFO)


def _threads_option():
    return click.option(
        "--threads", type=click.IntRange(min=1), default=None,
        help="CPU threads for torch's operators (intra- and inter-op) [default: torch's, one per core]. "
             "On a busy or shared machine fewer is often faster: 1 thread beat 2 by about 10x on a loaded 2-core box.",
    )  # fmt: skip


def describe_model(preset: str, overrides: dict) -> str:
    from mner.train.model import MGCMT, ModelConfig, parameter_table

    config = ModelConfig.preset(preset, **overrides)
    model = MGCMT(config)
    rows = parameter_table(model)
    width = max(len(name) for name, _ in rows)
    lines = [f"MGCMT, preset {preset!r}: {config}", "", f"{'module':<{width}}  {'parameters':>12}  reference (IIE4MNER MSCMT)"]
    for name, count in rows:
        lines.append(f"{name:<{width}}  {count:>12,}  {REFERENCE_NAMES.get(name, '-')}")
    total = sum(count for _, count in rows)
    lines.append(f"{'total':<{width}}  {total:>12,}")
    return "\n".join(lines)


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _preset_default(field: str) -> str:
    if field == "max_length":
        return clikit.preset_default("--max-length", {name: config.max_length for name, config in PRESETS.items()})
    values = {name: getattr(defaults, field) for name, defaults in TRAINING_DEFAULTS.items()}
    return clikit.preset_default(field, values)


@clikit.command()
@clikit.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False),
               help="TWITTER-format data: a folder with train.txt, valid.txt and test.txt (CoNLL + IMGID lines).")
@clikit.option("--output", "-o", "out_dir", hidden_aliases=("--out",), type=click.Path(file_okay=False),
               help="Folder to write: best.pt, last.pt (for --resume), history.jsonl, history.png, the feature cache.")
@clikit.option("--preset", type=click.Choice(sorted(PRESETS)), default=DEFAULT_PRESET,
               help="Model size and training defaults. tiny: a 4-layer, 256-wide model that learns from scratch on "
                    "a CPU in minutes. paper: BERT-base size, for fine-tuning a pretrained --bert (without one it "
                    "warns: BERT would train from random weights).")
@clikit.option("--bert", type=click.Path(exists=True, file_okay=False),
               help="Local pretrained BERT directory (config.json, weights, vocab.txt), e.g. bert-base-cased.")
@clikit.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False),
               help="Folder of <IMGID>.jpg; default: no images (a text-only model).")
@clikit.option("--word-vectors", type=click.Path(exists=True, dir_okay=False),
               help="Word vectors for the augmentation: word2vec text/binary, GloVe text, fastText .bin, a gensim "
                    "save, or a .npy matrix with --word-list; default: word2vec trained on the training text.")
@clikit.option("--word-list", type=click.Path(exists=True, dir_okay=False),
               help="The words of a --word-vectors .npy matrix, one per row: a one-column .parquet or a text file "
                    "with one word per line.")
@clikit.option("--resnet-weights", type=click.Path(exists=True, dir_okay=False),
               help="torchvision ResNet state_dict file for the frozen grid encoder; default: random (seeded).")
@clikit.option("--detector", type=click.Choice(DETECTOR_CHOICES), default=DEFAULT_DETECTOR, metavar="NAME",
               help=f"Frozen object detector (torchvision, COCO): {detector_help()}. The MobileNetV3 ones cost a CPU "
                    "far less per picture and find fewer objects; recorded in best.pt, mner-export follows it.")
@clikit.option("--detector-weights", type=click.Path(exists=True, dir_okay=False),
               help="torchvision COCO state_dict file of the --detector's architecture; default: random (seeded).")
@clikit.option("--grid-arch", type=click.Choice(["resnet152", "resnet101", "resnet50"]), default="resnet152",
               help="Frozen grid encoder (the paper: ResNet-152).")
@clikit.option("--detector-size", type=click.IntRange(min=1),
               help="Letterbox side of the detector input: a multiple of 128 for RetinaNet, 32 for SSDlite, 64 for "
                    "Faster R-CNN [default: the detector's own: 512 RetinaNet, 320 the others].")
@clikit.option("--epochs", type=click.IntRange(min=1), help=f"Training epochs. {_preset_default('epochs')}")
@clikit.option("--batch-size", type=click.IntRange(min=1), help=f"Posts per batch. {_preset_default('batch_size')}")
@clikit.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True),
               help=f"Peak AdamW learning rate (linear warm-up, then decay). {_preset_default('learning_rate')}")
@clikit.option("--bert-lr", "bert_learning_rate", type=click.FloatRange(min=0, min_open=True),
               help="Peak learning rate of the pretrained --bert's own weights (the layers that start random keep "
                    "--lr); default: --lr for all.")
@clikit.option("--max-length", type=click.IntRange(min=3),
               help=f"Word-pieces per post incl. [CLS]/[SEP] (the paper: 64). {_preset_default('max_length')}")
@clikit.option("--max-posts", type=click.IntRange(min=1), help="Use only the first N posts of each split (quick runs).")
@clikit.option("--seed", type=int, default=42, help="Seeds the initialisation, the batch order and random encoders.")
@clikit.option("--device", default="auto", help="auto (a GPU if torch sees one), cpu, cuda, cuda:N.")
@_threads_option()
@clikit.option("--resume", is_flag=True, help="Continue from <output>/last.pt after its last finished epoch.")
@clikit.option("--splitter", type=click.Choice(["tweet", "whitespace"]), default="tweet",
               help="How the data's words were split, so raw text is split alike when tagging: tweet "
                    "(TWITTER-2015/2017) or whitespace.")
@clikit.option("--augmentation", type=click.Choice(AUGMENTATION_MODES),
               help="Ablation: how augmentation joins BERT [default: the preset's, add].")
@clikit.option("--fusion", type=click.Choice(FUSION_MODES),
               help="Ablation: which image granularities are fused [default: the preset's, gate_cat].")
@clikit.option("--no-aux-task", is_flag=True, help="Ablation: drop the auxiliary entity-span CRF.")
@clikit.option("--char-cnn", is_flag=True,
               help="Ablation: add the reference's char-CNN to BERT's input embeddings (not exportable yet).")
@clikit.option("--describe", is_flag=True, help="Print each module's parameter count for --preset and exit.")
@clikit.progress_option()
@clikit.verbose_option()
def train_command(describe: bool, verbose: bool, augmentation, fusion, no_aux_task, char_cnn, **options) -> None:
    """Train MGCMT on TWITTER-format data into <output>/best.pt.

    Each epoch appends a line to <output>/history.jsonl (loss, dev P/R/F1, learning rate,
    seconds) and redraws <output>/history.png.
    """
    _setup_logging(verbose)
    require_extra("train")  # one line naming pip install 'mner[train]' in a slim install, not a traceback
    overrides = _model_overrides(augmentation, fusion, no_aux_task, char_cnn)
    if describe:
        click.echo(describe_model(options["preset"], overrides))
        return
    if not options["data_dir"] or not options["out_dir"]:
        raise click.UsageError("--data and --output are required (or use --describe)")
    from mner.train.trainer import TrainArgs, train

    paths = ("data_dir", "out_dir", "bert", "word_vectors", "word_list", "images_dir", "resnet_weights",
             "detector_weights")
    for name in paths:
        options[name] = _optional_path(options[name])
    try:
        summary = train(TrainArgs(model_overrides=overrides, **options))
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if summary["rank"] != 0:  # under torchrun, rank 0 evaluates, saves and reports
        return
    out_dir = options["out_dir"]
    click.echo(f"best.pt: {out_dir / 'best.pt'} (epoch {summary['best_epoch']})")
    click.echo(f"history: {out_dir / 'history.jsonl'}, {out_dir / 'history.png'}")
    click.echo(f"dev  F1 {summary['dev']['micro']['f1']:.4f}")
    click.echo(f"test F1 {summary['test']['micro']['f1']:.4f}")
    click.echo(f"time {summary['elapsed_s']:.0f} s")


def _model_overrides(augmentation: str | None, fusion: str | None, no_aux_task: bool, char_cnn: bool = False) -> dict:
    overrides: dict = {}
    if augmentation:
        overrides["augmentation"] = augmentation
    if fusion:
        overrides["fusion"] = fusion
    if no_aux_task:
        overrides["aux_task"] = False
    if char_cnn:
        overrides["char_cnn"] = True
    return overrides


@clikit.command()
@clikit.option("--checkpoint", "checkpoint_path", hidden_aliases=("--ckpt",), required=True,
               type=click.Path(exists=True, dir_okay=False), help="A best.pt written by mner-train or mner-convert.")
@clikit.option("--data", "data_path", required=True, type=click.Path(exists=True),
               help="TWITTER-format data with gold tags: a folder with train.txt, valid.txt, test.txt (scored: "
                    "--split), or one CoNLL + IMGID file.")
@clikit.option("--split", type=click.Choice(SPLITS), default="test",
               help="Which file of a --data folder to score (not used when --data is a file).")
@clikit.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False),
               help="Folder of <IMGID>.jpg; default: every post scored without its picture.")
@clikit.option("--resnet-weights", type=click.Path(exists=True, dir_okay=False),
               help="The grid encoder's weights training used; default: the random (seeded) ones it recorded.")
@clikit.option("--detector-weights", type=click.Path(exists=True, dir_okay=False),
               help="The detector's weights training used; default: the random (seeded) ones it recorded.")
@clikit.option("--batch-size", type=click.IntRange(min=1), default=64, help="Posts per batch.")
@clikit.option("--max-posts", type=click.IntRange(min=1), help="Score only the first N posts of the data.")
@clikit.option("--device", default="auto", help="auto (a GPU if torch sees one), cpu, cuda, cuda:N.")
@_threads_option()
@clikit.option("--decoding", type=click.Choice(["constrained", "reference"]), default="constrained",
               help="constrained: well-formed BIO word tags, conlleval scoring (what training and mner-tag use). "
                    "reference: as the MGCMT authors evaluated (unconstrained crf.decode, the tag at each word's first "
                    "piece even if X/[CLS]/[SEP], seqeval micro avg), to check a converted checkpoint against their "
                    "figures.")  # fmt: skip
@clikit.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@clikit.progress_option()
@clikit.verbose_option()
def eval_command(checkpoint_path, data_path, split, images_dir, resnet_weights, detector_weights, batch_size, max_posts,
                 device, threads, decoding, as_json, progress, verbose) -> None:  # fmt: skip
    """Entity-level P/R/F1 (micro and per type) of a checkpoint on TWITTER-format data."""
    _setup_logging(verbose)
    require_extra("train")  # one line naming pip install 'mner[train]' in a slim install, not a traceback
    from mner.runtime.conll import data_file
    from mner.train.metrics import format_report
    from mner.train.trainer import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(
            checkpoint_path=Path(checkpoint_path),
            data_path=data_file(data_path, split),
            images_dir=_optional_path(images_dir),
            resnet_weights=_optional_path(resnet_weights),
            detector_weights=_optional_path(detector_weights),
            device=device,
            decoding=decoding,
            batch_size=batch_size,
            max_posts=max_posts,
            threads=threads,
            progress=progress,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(result, indent=2) if as_json else f"decoding: {decoding}\n{format_report(result)}")


@clikit.command()
@clikit.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
               help="The authors' pytorch_model.bin (MSCMT state_dict).")
@clikit.option("--bert", required=True, type=click.Path(exists=True, file_okay=False),
               help="The BERT directory they trained from (bert_config.json or config.json, vocab.txt).")
@clikit.option("--aug-table", required=True, type=click.Path(exists=True, dir_okay=False), help="Their tweet_aug.npy.")
@clikit.option("--word-vocab", type=click.Path(exists=True, dir_okay=False),
               help="Their word vocabulary: one word per line in table-row order, or a JSON word->row map.")
@clikit.option("--vocab-from-data", type=click.Path(exists=True, file_okay=False),
               help="Rebuild their vocabulary from the data folder (train/dev/test, their ordering).")
@clikit.option("--labels", help="Their label list, comma-separated, in their order (index 0 = padding is implied). "
               "Default: O,B-MISC,I-MISC,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,X,[CLS],[SEP], with MISC renamed to "
               "the fourth type of --vocab-from-data's data (OTHER for TWITTER-2015); refused if it lacks a type "
               "of that data.")
@clikit.option("--output", "-o", "out", hidden_aliases=("--out",), required=True, type=click.Path(dir_okay=False),
               help="The best.pt file to write.")
@clikit.verbose_option()
def convert_command(weights, bert, aug_table, word_vocab, vocab_from_data, labels, out, verbose) -> None:
    """Import an IIE4MNER (MSCMT) checkpoint into a self-contained best.pt, reporting every unmapped key."""
    _setup_logging(verbose)
    require_extra("train")  # one line naming pip install 'mner[train]' in a slim install, not a traceback
    from mner.train.convert import convert_reference_checkpoint

    if bool(word_vocab) == bool(vocab_from_data):
        raise click.UsageError("give exactly one of --word-vocab and --vocab-from-data")
    try:
        report = convert_reference_checkpoint(
            weights_path=Path(weights),
            bert_dir=Path(bert),
            aug_table_path=Path(aug_table),
            word_vocab_path=_optional_path(word_vocab),
            vocab_data_dir=_optional_path(vocab_from_data),
            reference_labels=labels.split(",") if labels else None,
            out_path=Path(out),
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {out}")
    for key in report.unmapped:
        click.echo(f"unmapped (not used by the paper's best configuration): {key}")
    for key in report.missing:
        click.echo(f"missing from the source (left at initialisation): {key}")
