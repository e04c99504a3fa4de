"""Train the caption decoder on cached encoder features (or, with a learned encoder part, on the
frozen trunk's cached maps, training that part too) and evaluate it on the held-out split.

Usage: python -m training.train --dataset shapes --data data/shapes --out runs/demo

Writes to --out: encoder.keras, decoder_init.keras, decoder_step.keras (the models export
reads), vocab.json, run.json (everything needed to rebuild and describe the model),
heldout.json (the test images, for export's parity check) and metrics.json (BLEU-1..4 and,
on synthetic scenes, object-attribute accuracy).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .datasets import DatasetError, Example, load_dataset
from .model import DecoderSettings
from .vocab import Vocabulary, normalise


@dataclass
class TrainConfig:
    """Training settings: the decoder's architecture and how it is fitted. Every setting is also a
    command-line flag and a key of --config files, by its flat name (units, learning_rate, ...)."""

    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    learning_rate: float = 2e-3   # Adam
    weight_decay: float = 0.0     # AdamW decoupled weight decay; 0 = plain Adam
    batch_size: int = 64
    epochs: int = 30              # upper bound; early stopping usually ends sooner
    patience: int = 4             # epochs without a better validation loss before stopping
    min_count: int = 1            # words seen fewer times map to <unk>
    max_length: int = 0           # longest caption in words; 0 = the longest training caption
    seed: int = 0
    # The encoder's learned part (training.adapter), attention decoders only: a small network on the
    # frozen trunk's maps, trained with the decoder and exported inside the encoder graph.
    learned_encoder: bool = False
    encoder_tap: str = "mixed2"   # the trunk block whose map it reads besides the last (mixed0 ... mixed9)
    adapter_channels: int = 128   # its width; its features have twice as many channels
    cell_loss_weight: float = 0.0  # weight of its auxiliary loss: what covers each position (synthetic scenes only)

    @staticmethod
    def setting_names() -> list[str]:
        """Every setting's flat name, decoder settings first."""
        return [f.name for f in fields(DecoderSettings)] + [f.name for f in fields(TrainConfig) if f.name != "decoder"]

    def flat(self) -> dict:
        """The settings as one flat dict (run.json's "training", --config files)."""
        return {**asdict(self.decoder), **{k: v for k, v in asdict(self).items() if k != "decoder"}}

    def with_values(self, **values) -> "TrainConfig":
        """A copy with some settings changed, by flat name; unknown names are refused."""
        unknown = sorted(set(values) - set(self.setting_names()))
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        own = {f.name for f in fields(DecoderSettings)}
        decoder = replace(self.decoder, **{k: v for k, v in values.items() if k in own})
        return replace(self, decoder=decoder, **{k: v for k, v in values.items() if k not in own})

    def validate(self) -> None:
        checks = {
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0, "batch_size": self.batch_size > 0,
            "epochs": self.epochs > 0, "patience": self.patience > 0,
            "min_count": self.min_count > 0, "max_length": self.max_length >= 0,
            "adapter_channels": self.adapter_channels > 0, "cell_loss_weight": self.cell_loss_weight >= 0,
        }
        bad = self.decoder.problems() + [f"{n}={getattr(self, n)!r}" for n, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training settings: {', '.join(bad)}")
        if self.learned_encoder and not (self.decoder.attention and self.decoder.feature_norm == "none"):
            raise ValueError("learned_encoder needs attention and feature_norm none (the learned part reads the "
                             "trunk's maps and standardises them itself)")

    @classmethod
    def from_file(cls, path: Path) -> "TrainConfig":
        """Read settings from a JSON object (e.g. the tuner's best configuration); unknown keys are refused."""
        data = json.loads(Path(path).read_text())
        data = data.get("config", data)
        defaults = cls().flat()
        unknown = sorted(set(data) - set(defaults))
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}")
        return cls().with_values(**{k: type(defaults[k])(v) for k, v in data.items()})


@dataclass
class DataSettings:
    """Which data to train on and where its encoder features come from (the dataset flags)."""

    dataset: str                  # shapes | flickr8k | coco
    data: Path                    # dataset folder (shapes, flickr8k) or COCO captions JSON
    image_dir: Path | None = None  # COCO image folder
    encoder_weights: str = "random:0"  # imagenet | random:SEED | a local InceptionV3 weights file
    cache_dir: Path | None = Path("data/cache")  # encoder feature cache
    limit: int = 0                # use only the first N training images (smoke runs)

    @classmethod
    def from_args(cls, args) -> "DataSettings":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def config_notes(path: Path) -> dict:
    """What a settings file says besides its settings (e.g. how the tuner found them), for provenance."""
    data = json.loads(Path(path).read_text())
    notes = {k: v for k, v in data.items() if k != "config"} if "config" in data else {}
    return {"config_file": str(path), **notes}


def caption_arrays(examples: list[Example], vocab: Vocabulary, max_length: int):
    """(image index, input ids, target ids, weights) for every caption of every image."""
    index, sequences = [], []
    for i, example in enumerate(examples):
        for caption in example.captions:
            index.append(i)
            sequences.append(vocab.encode(caption, max_length))
    sequences = np.stack(sequences)
    targets = sequences[:, 1:]
    return np.array(index), sequences[:, :-1], targets, (targets != vocab.special_ids["pad"]).astype(np.float32)


def grouped_caption_arrays(examples: list[Example], vocab: Vocabulary, max_length: int, per_image: int):
    """(input ids, target ids, weights), each [images, per_image, T]: every image's first `per_image`
    captions, repeated in turn when it has fewer."""
    sequences = np.stack([np.stack([vocab.encode(e.captions[k % len(e.captions)], max_length) for k in range(per_image)])
                          for e in examples])
    targets = sequences[..., 1:]
    return sequences[..., :-1], targets, (targets != vocab.special_ids["pad"]).astype(np.float32)


def _read_scenes(data: Path) -> dict | None:
    scenes = Path(data) / "scenes.json"
    return json.loads(scenes.read_text())["scenes"] if scenes.exists() else None


@dataclass
class Prepared:
    """A dataset with its vocabulary and cached encoder features, ready for decoder fitting."""

    splits: dict[str, list[Example]]
    vocab: Vocabulary
    max_length: int
    features: dict[str, np.ndarray | list[np.ndarray]]  # per split; the trunk's maps [tap, last] for a learned encoder
    scenes: dict | None           # synthetic ground truth, for object-attribute accuracy
    encoder: object               # the Keras encoder (or trunk) the features came from


@dataclass
class Fitted:
    """A trained decoder and, if any, the encoder's learned part."""

    config: object                # DecoderConfig
    init_model: object            # Prepared.features (features, or the trunk's maps) -> the initial state
    step_model: object
    history: object
    decoder_init: object          # features -> the initial state: the graph export converts
    adapter: object | None = None  # the learned part: the trunk's maps -> features

    def encoder(self, prepared: Prepared):
        """The whole encoder, image -> features (the trunk and the learned part when there is one)."""
        from .adapter import learned_encoder

        return prepared.encoder if self.adapter is None else learned_encoder(prepared.encoder, self.adapter)

    def features(self, prepared: Prepared, split: str) -> np.ndarray:
        """The decoder's features for a split's images."""
        inputs = prepared.features[split]
        return inputs if self.adapter is None else self.adapter.predict(inputs, batch_size=64, verbose=0)


def prepare(data: DataSettings, config: TrainConfig, log=print) -> Prepared:
    """Read the dataset, build the vocabulary and extract (or load cached) encoder features."""
    from .features import extract_features
    from .model import PREPROCESSING, build_encoder, build_trunk

    splits = load_dataset(data.dataset, Path(data.data), data.image_dir)
    if data.limit:
        splits = {k: v[:data.limit if k == "train" else max(1, data.limit // 8)] for k, v in splits.items()}
    if not splits["train"] or not splits["dev"] or not splits["test"]:
        raise DatasetError("the dataset needs images in each of the train, dev and test splits")
    for split in splits.values():
        for example in split:
            if not example.image.is_file():
                raise DatasetError(f"image listed in the captions is missing: {example.image}")

    vocab = Vocabulary.build((c for e in splits["train"] for c in e.captions), config.min_count)
    longest = max(len(normalise(c)) for e in splits["train"] for c in e.captions)
    max_length = min(longest, config.max_length) if config.max_length else longest
    log(f"{len(splits['train'])} train / {len(splits['dev'])} dev / {len(splits['test'])} test images; "
        f"vocabulary {len(vocab)} words; captions up to {max_length} words")

    if config.learned_encoder:
        # The trunk's maps, for the learned part. float16 halves the train and dev maps (about 1 MB an
        # image); the test maps stay float32, as the Keras captions and export's parity features come from them.
        encoder = build_trunk(data.encoder_weights, config.encoder_tap)
        features = {split: extract_features(encoder, [e.image for e in examples], PREPROCESSING, data.cache_dir,
                                            dtype="float32" if split == "test" else "float16")
                    for split, examples in splits.items()}
    else:
        encoder = build_encoder(data.encoder_weights, spatial=config.decoder.attention)
        features = {split: extract_features(encoder, [e.image for e in examples], PREPROCESSING, data.cache_dir)
                    for split, examples in splits.items()}
    scenes = _read_scenes(data.data) if data.dataset == "shapes" else None
    return Prepared(splits, vocab, max_length, features, scenes, encoder)


def fit_decoder(prepared: Prepared, config: TrainConfig, checkpoint: Path | None = None,
                callbacks_for=None, verbose: int = 2) -> Fitted:
    """Train a decoder (and the encoder's learned part, if the config asks) on the train split,
    early-stopped on the dev loss.

    `callbacks_for(init_model, step_model)` may return extra Keras callbacks that use the models.
    """
    import keras

    from .model import DecoderConfig, build_decoder, feature_statistics

    keras.utils.set_random_seed(config.seed)
    decoder_config = DecoderConfig(vocab_size=len(prepared.vocab), max_length=prepared.max_length,
                                   **asdict(config.decoder))
    adapter = None
    if config.learned_encoder:
        from .adapter import build_adapter

        adapter = build_adapter(*prepared.features["train"], config.adapter_channels)
        train_features = np.zeros((1, *adapter.output.shape[1:]), np.float32)  # its shape: "none" needs no statistics
    else:
        train_features = prepared.features["train"]
    training_model, decoder_init, step_model = build_decoder(
        decoder_config, *feature_statistics(train_features, config.decoder.feature_norm),
        positions=train_features.shape[1] if config.decoder.attention else 0)
    init_model, fit_model, cell_loss = decoder_init, training_model, False
    if adapter is not None:
        maps = [keras.Input(m.shape[1:], name=name) for m, name in zip(prepared.features["train"], ("tap", "top"))]
        tokens = keras.Input(training_model.inputs[1].shape[1:], dtype="int32", name="tokens")
        features = adapter(maps)
        outputs = [training_model([features, tokens])]
        cell_loss = config.cell_loss_weight > 0 and prepared.scenes is not None
        if cell_loss:
            from .adapter import cell_heads

            outputs += cell_heads(features)
        fit_model = keras.Model([*maps, tokens], outputs, name="learned_training")
        init_model = keras.Model(maps, decoder_init(adapter(maps)), name="learned_init")
    optimizer = (keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
                 if config.weight_decay else keras.optimizers.Adam(config.learning_rate))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if cell_loss:
        fit_model.compile(optimizer=optimizer, loss=[loss] * len(fit_model.outputs),
                          loss_weights=[1.0] + [config.cell_loss_weight] * (len(fit_model.outputs) - 1))
    else:
        fit_model.compile(optimizer=optimizer, loss=loss, weighted_metrics=["accuracy"])

    def dataset(split):
        inputs = prepared.features[split]
        if config.decoder.attention:  # one row per image: copying its map for every caption would not fit in memory
            tokens, targets, weights = grouped_caption_arrays(prepared.splits[split], prepared.vocab,
                                                              prepared.max_length, config.decoder.captions_per_image)
            if adapter is None:
                return [inputs, tokens], targets, weights
            if not cell_loss:
                return [*inputs, tokens], targets, weights
            from .adapter import CELL_TARGETS, cell_truth, grid_side

            truth = cell_truth([e.image for e in prepared.splits[split]], prepared.scenes,
                               grid_side(adapter.output.shape[1]))
            every = np.ones(truth.shape[:2], np.float32)
            return ([*inputs, tokens], [targets, *(truth[..., k] for k in range(len(CELL_TARGETS)))],
                    [weights, *(every for _ in CELL_TARGETS)])
        index, tokens, targets, weights = caption_arrays(prepared.splits[split], prepared.vocab, prepared.max_length)
        return [inputs[index], tokens], targets, weights

    from .batches import batches

    train = batches(*dataset("train"), config.batch_size, shuffle_seed=config.seed)
    dev = batches(*dataset("dev"), config.batch_size)
    every = [
        keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-5),
    ]
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        every.append(keras.callbacks.ModelCheckpoint(str(checkpoint), save_best_only=True, save_weights_only=True))
    history = fit_model.fit(train, validation_data=dev, epochs=config.epochs,
                            callbacks=every + (callbacks_for(init_model, step_model) if callbacks_for else []),
                            shuffle=False, verbose=verbose)  # the dataset shuffles itself
    return Fitted(decoder_config, init_model, step_model, history, decoder_init, adapter)


def evaluate_split(prepared: Prepared, init_model, step_model, split: str, coco: bool = False):
    """Greedy captions for a split and their quality: BLEU-1..4 and, on synthetic scenes,
    object-attribute accuracy; with `coco`, the COCO caption metrics too (CIDEr-D and the rest;
    METEOR on real data where Java is installed). Returns (captions, metrics)."""
    from .evaluate import attribute_accuracy, corpus_bleu, greedy_captions

    examples = prepared.splits[split]
    captions = greedy_captions(init_model, step_model, prepared.features[split], prepared.vocab, prepared.max_length)
    references = [e.captions for e in examples]
    metrics = corpus_bleu(captions, references)
    if coco:
        from .caption_metrics import coco_metrics

        # METEOR's Java start-up (about 10 s) is left out of the synthetic demo's build budget.
        metrics.update(coco_metrics(captions, references, meteor=None if prepared.scenes is None else False))
    if prepared.scenes is not None:
        metrics.update(attribute_accuracy(captions, [prepared.scenes[e.image.name] for e in examples]))
    return captions, metrics


def learning_curve_callback(prepared: Prepared, curve: list, log=print):
    """A callback factory for fit_decoder: after every epoch, the dev split's greedy quality
    (every object right on synthetic scenes, BLEU-4 otherwise) is appended to `curve`."""
    import keras

    key = "objects_right_all" if prepared.scenes is not None else "bleu4"

    class DevQuality(keras.callbacks.Callback):
        def __init__(self, init_model, step_model):
            super().__init__()
            self.init_model, self.step_model = init_model, step_model

        def on_epoch_end(self, epoch, logs=None):
            _, metrics = evaluate_split(prepared, self.init_model, self.step_model, "dev")
            curve.append({"epoch": epoch + 1, "seconds": round(time.time() - started, 1), key: round(metrics[key], 4),
                          "val_loss": round(float((logs or {}).get("val_loss", float("nan"))), 4)})
            log(f"epoch {epoch + 1}: dev {key} {metrics[key]:.3f}")

    started = time.time()
    return lambda init_model, step_model: [DevQuality(init_model, step_model)]


def train(data: DataSettings, config: TrainConfig, out: Path, log=print, notes: dict | None = None,
          quiet: bool = False) -> dict:
    """Run the whole pipeline into the run folder `out`; returns the metrics written to metrics.json.

    `notes` (e.g. the tuning record of a --config file) are kept in run.json for the bundle's provenance.
    """
    from .model import PREPROCESSING, RANDOM_WEIGHTS_NOTE

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(data, config, log)
    curve: list[dict] = []
    fitted = fit_decoder(prepared, config, checkpoint=out / "checkpoints" / "decoder.weights.h5",
                         callbacks_for=learning_curve_callback(prepared, curve, log), verbose=2 if quiet else 1)
    history = fitted.history

    test_captions, metrics = evaluate_split(prepared, fitted.init_model, fitted.step_model, "test", coco=True)
    if prepared.scenes is None and "meteor" not in metrics:
        from .caption_metrics import METEOR_MISSING

        log(METEOR_MISSING)
    metrics.update({
        "test_images": len(prepared.splits["test"]),
        "epochs_run": len(history.history["loss"]),
        "best_val_loss": float(min(history.history["val_loss"])),
        "train_seconds": round(time.time() - started, 1),
        "learning_curve": curve,
    })

    encoder = fitted.encoder(prepared)
    test_features = fitted.features(prepared, "test")
    encoder.save(out / "encoder.keras")
    fitted.decoder_init.save(out / "decoder_init.keras")
    fitted.step_model.save(out / "decoder_step.keras")
    prepared.vocab.save(out / "vocab.json")
    run = {
        "decoder": fitted.config.as_dict(),
        "training": config.flat(),
        "encoder": {"architecture": "InceptionV3", "weights": data.encoder_weights,
                    "feature_dim": int(test_features.shape[-1]), "feature_shape": list(test_features.shape[1:]),
                    "pooling": ("none: the learned part's 8x8 map, as positions" if fitted.adapter is not None else
                                "none: the last map, as positions" if config.decoder.attention else "global average"),
                    **({"random_weights": RANDOM_WEIGHTS_NOTE} if data.encoder_weights.startswith("random:") else {}),
                    **({"learned_part": describe_learned_part(prepared.encoder, fitted.adapter, config)}
                       if fitted.adapter is not None else {})},
        "preprocessing": PREPROCESSING,
        "special_tokens": prepared.vocab.special_ids,
        "max_length": prepared.max_length,
        "dataset": {"kind": data.dataset, "path": str(data.data),
                    "images": {k: len(v) for k, v in prepared.splits.items()}},
    }
    if notes:
        run["notes"] = notes
    (out / "run.json").write_text(json.dumps(run, indent=2))
    heldout = [{"image": str(e.image), "references": e.captions, "keras_greedy": " ".join(words)}
               for e, words in zip(prepared.splits["test"], test_captions)]
    (out / "heldout.json").write_text(json.dumps(heldout, indent=1))
    # The features the Keras captions came from: export checks the served preprocessing against them.
    np.save(out / "heldout_features.npy", test_features)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log("test metrics: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in metrics.items() if k != "learning_curve"))
    return metrics


def describe_learned_part(trunk, adapter, config: TrainConfig) -> dict:
    """What run.json (and so the bundle's provenance) says of the encoder's learned part, with its cost."""
    from .adapter import conv_macs

    trunk_macs, learned = conv_macs(trunk), conv_macs(adapter)
    return {"reads": [config.encoder_tap, "mixed10"], "channels": config.adapter_channels,
            "cell_loss_weight": config.cell_loss_weight, "parameters": int(adapter.count_params()),
            "macs": learned, "trunk_macs": trunk_macs, "share_of_trunk": round(learned / trunk_macs, 4),
            "macs_counted": "multiply-adds of every convolution from its output size, kernel and input channels; "
                            "pooling, normalisation and activations left out"}


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which data and encoder features to use (shared with the tuner)."""
    parser.add_argument("--dataset", choices=("shapes", "flickr8k", "coco"), required=True)
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset folder (shapes, flickr8k) or COCO captions JSON")
    parser.add_argument("--image-dir", type=Path, help="COCO image folder")
    parser.add_argument("--encoder-weights", default="random:0",
                        help="imagenet | random:SEED | path to a local InceptionV3 weights file")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="encoder feature cache")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke runs)")
    parser.add_argument("--quiet", action="store_true", help="less progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the caption decoder and evaluate it on held-out images.")
    add_dataset_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--config", type=Path, help="JSON file of training settings (flags below override it)")
    for name, default in TrainConfig().flat().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=name, type=type(default), default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
        notes = config_notes(args.config) if args.config else {}
        config = config.with_values(**{name: getattr(args, name) for name in TrainConfig.setting_names()
                                       if getattr(args, name) is not None})
        config.validate()
        train(DataSettings.from_args(args), config, args.out, notes=notes, quiet=args.quiet)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
