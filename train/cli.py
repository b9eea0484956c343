"""Console entry points of training: mner-train, mner-eval, mner-convert (thin: parse, then call the library)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mner.train.model import AUGMENTATION_MODES, FUSION_MODES, PRESETS

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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("gensim", "smart_open"):  # per-epoch word2vec chatter drowns the training log
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)


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


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Folder with train.txt, valid.txt, test.txt (CoNLL + IMGID).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where best.pt, last.pt and the feature cache go.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True)
@click.option("--bert", type=click.Path(exists=True, file_okay=False), help="Local pretrained BERT directory (config.json, weights, vocab.txt).")
@click.option("--word-vectors", type=click.Path(exists=True, dir_okay=False), help="gensim-loadable word vectors; default: word2vec trained on the training text.")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False), help="Folder of <IMGID>.jpg; default: no images.")
@click.option("--resnet-weights", type=click.Path(exists=True, dir_okay=False), help="torchvision ResNet-152 state_dict file.")
@click.option("--detector-weights", type=click.Path(exists=True, dir_okay=False), help="torchvision RetinaNet-ResNet50-FPN-v2 COCO state_dict file.")
@click.option("--grid-arch", type=click.Choice(["resnet152", "resnet101", "resnet50"]), default="resnet152", show_default=True, help="Frozen grid encoder (the paper: ResNet-152).")
@click.option("--detector-size", type=int, default=512, show_default=True, help="Letterbox side of the detector input (a multiple of 128).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", "learning_rate", type=float)
@click.option("--max-length", type=int, help="Word-pieces per post incl. [CLS]/[SEP] (the paper: 64).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--resume", is_flag=True, help="Continue from <out>/last.pt.")
@click.option("--max-posts", type=int, help="Use only the first N posts of each split (quick runs).")
@click.option("--splitter", type=click.Choice(["tweet", "whitespace"]), default="tweet", show_default=True,
              help="How the data's words were split, so raw text is split alike when tagging: tweet (TWITTER-2015/2017) or whitespace.")
@click.option("--augmentation", type=click.Choice(AUGMENTATION_MODES), help="Ablation: how augmentation joins BERT (paper: add).")
@click.option("--fusion", type=click.Choice(FUSION_MODES), help="Ablation: which image granularities are fused (paper: gate_cat).")
@click.option("--no-aux-task", is_flag=True, help="Ablation: drop the auxiliary entity-span CRF.")
@click.option("--char-cnn", is_flag=True, help="Ablation: add the reference's char-CNN to BERT's input embeddings (not exportable yet).")
@click.option("--describe", is_flag=True, help="Print each module's parameter count and exit.")
@click.option("-v", "--verbose", is_flag=True)
def train_command(describe: bool, verbose: bool, augmentation, fusion, no_aux_task, char_cnn, **options) -> None:
    """Train MGCMT on TWITTER-format data into <out>/best.pt."""
    _setup_logging(verbose)
    overrides = _model_overrides(augmentation, fusion, no_aux_task, char_cnn)
    if describe:
        click.echo(describe_model(options["preset"], overrides))
        return
    if not options["data_dir"] or not options["out_dir"]:
        raise click.UsageError("--data and --out are required (or use --describe)")
    from mner.train.trainer import TrainArgs, train

    paths = ("data_dir", "out_dir", "bert", "word_vectors", "images_dir", "resnet_weights", "detector_weights")
    for name in paths:
        options[name] = _optional_path(options[name])
    try:
        summary = train(TrainArgs(model_overrides=overrides, **options))
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if summary["rank"] != 0:  # under torchrun, rank 0 evaluates, saves and reports
        return
    click.echo(f"best.pt: {options['out_dir'] / 'best.pt'} (epoch {summary['best_epoch']})")
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


@click.command()
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False), help="A best.pt written by mner-train or mner-convert.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False), help="A CoNLL + IMGID file with gold tags.")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--resnet-weights", type=click.Path(exists=True, dir_okay=False))
@click.option("--detector-weights", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--decoding", type=click.Choice(["constrained", "reference"]), default="constrained", show_default=True,
              help="constrained: well-formed BIO word tags, conlleval scoring (what training and mner-tag use). "
                   "reference: as the MGCMT authors evaluated (unconstrained crf.decode, the tag at each word's first "
                   "piece even if X/[CLS]/[SEP], seqeval micro avg), to check a converted checkpoint against their figures.")  # fmt: skip
def eval_command(ckpt, data_path, images_dir, resnet_weights, detector_weights, device, as_json, decoding) -> None:
    """Entity-level P/R/F1 (micro and per type) of a checkpoint on a CoNLL file."""
    _setup_logging(False)
    from mner.train.metrics import format_report
    from mner.train.trainer import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(
            checkpoint_path=Path(ckpt),
            data_path=Path(data_path),
            images_dir=_optional_path(images_dir),
            resnet_weights=_optional_path(resnet_weights),
            detector_weights=_optional_path(detector_weights),
            device=device,
            decoding=decoding,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(result, indent=2) if as_json else f"decoding: {decoding}\n{format_report(result)}")


@click.command()
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False), help="The authors' pytorch_model.bin (MSCMT state_dict).")
@click.option("--bert", required=True, type=click.Path(exists=True, file_okay=False), help="The BERT directory they trained from (bert_config.json or config.json, vocab.txt).")
@click.option("--aug-table", required=True, type=click.Path(exists=True, dir_okay=False), help="Their tweet_aug.npy.")
@click.option("--word-vocab", type=click.Path(exists=True, dir_okay=False), help="Their word vocabulary: one word per line in table-row order, or a JSON word->row map.")
@click.option("--vocab-from-data", type=click.Path(exists=True, file_okay=False), help="Rebuild their vocabulary from the data folder (train/dev/test, their ordering).")
@click.option("--labels", help="Their label list, comma-separated, in their order (index 0 = padding is implied). "
              "Default: O,B-MISC,I-MISC,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,X,[CLS],[SEP], with MISC renamed to the "
              "fourth type of --vocab-from-data's data (OTHER for TWITTER-2015); refused if it lacks a type of that data.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write best.pt.")
def convert_command(weights, bert, aug_table, word_vocab, vocab_from_data, labels, out) -> None:
    """Import an IIE4MNER (MSCMT) checkpoint into a self-contained best.pt, reporting every unmapped key."""
    _setup_logging(False)
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
