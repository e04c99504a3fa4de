"""Peak resident memory of `export.from_keras` with each encoder it knows, end to end.

Usage: python -m benchmarks.import_memory [--encoders vgg16 inception_v3 ...] [--results benchmarks/results]

For each encoder of export.keras_encoders.ENCODERS: a seeded-random keras.applications model's
weights file (as keras.applications downloads it, with or without the top as the recipe cuts it),
a small untrained merge decoder of its feature size and a pickled wordtoix; then the import as a
user runs it, in a process of its own, whose peak resident set (getrusage of that child alone)
and wall time are recorded. Results: import_memory.json and .md, with the machine beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BUDGET_MB = 4096   # the import of any listed encoder fits in 4 GB


def write_inputs(folder: Path, name: str) -> dict:
    """The encoder's weights file, a merge decoder of its feature size and a vocabulary, under `folder`."""
    import keras

    from export.keras_encoders import ENCODERS

    recipe = ENCODERS[name]
    keras.utils.set_random_seed(0)
    application = getattr(keras.applications, recipe.application)
    encoder = application(weights=None, include_top=recipe.include_top,
                          input_shape=(recipe.image_size, recipe.image_size, 3))
    encoder.save_weights(folder / f"{name}.weights.h5")
    parameters = encoder.count_params()
    del encoder
    words = ["startseq", "endseq", "a", "red", "circle", "square"]
    image = keras.Input((recipe.feature_dim,))
    text = keras.Input((8,))
    picture = keras.layers.Dense(32, activation="relu")(image)
    sequence = keras.layers.LSTM(32)(keras.layers.Embedding(len(words) + 1, 16, mask_zero=True)(text))
    output = keras.layers.Dense(len(words) + 1, activation="softmax")
    head = output(keras.layers.add([picture, sequence]))
    # Untrained, it may rank padding first, where the notebook loop stops and the bundle does not.
    output.bias.assign(output.bias.numpy() - 10.0 * (keras.ops.arange(len(words) + 1) == 0).numpy())
    keras.Model([image, text], head).save(folder / f"{name}_decoder.keras")
    (folder / "wordtoix.pkl").write_bytes(pickle.dumps({w: i + 1 for i, w in enumerate(words)}))
    return {"encoder": recipe.application, "cut": recipe.description, "parameters": parameters}


def measure(folder: Path, name: str) -> dict:
    """Run the import of `name`'s files in a child process; its peak RSS and seconds."""
    command = [sys.executable, "-m", "export.from_keras", "--decoder", str(folder / f"{name}_decoder.keras"),
               "--vocabulary", str(folder / "wordtoix.pkl"), "--encoder", name,
               "--encoder-weights", str(folder / f"{name}.weights.h5"), "--parity-images", "4",
               "--out", str(folder / f"bundle_{name}")]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    error = child.stderr.read().strip().splitlines()
    child.stderr.close()
    return {"peak_mb": round(usage.ru_maxrss / 1024), "seconds": round(seconds, 1),
            "imported": os.waitstatus_to_exitcode(status) == 0, "last_line": error[-1] if error else ""}


def markdown(results: dict) -> str:
    """import_memory.md from import_memory.json."""
    lines = ["# Importing a notebook model: peak memory by encoder\n",
             f"Machine: {results['machine']}. `export.from_keras` with each encoder (seeded-random weights from a "
             f"local file, a small merge decoder, 4 parity images), in a process of its own: its peak resident "
             f"set and wall time. Budget: {results['budget_mb']} MB.\n",
             "| encoder | cut | parameters | imported | peak resident | time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in results["encoders"]:
        lines.append(f"| {row['encoder']} | {row['cut']} | {row['parameters'] / 1e6:.1f} M | "
                     f"{'yes' if row['imported'] else 'no: ' + row['last_line']} | **{row['peak_mb']} MB** | "
                     f"{row['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def run(encoders: list[str], scratch: Path) -> list[dict]:
    rows = []
    for name in encoders:
        rows.append({**write_inputs(scratch, name), **measure(scratch, name)})
        print(rows[-1], file=sys.stderr)
    return rows


def main(argv=None) -> int:
    from export.keras_encoders import ENCODERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from .floor import machine

    with tempfile.TemporaryDirectory() as scratch:
        rows = run(args.encoders, Path(scratch))
    results = {"machine": machine(), "budget_mb": BUDGET_MB, "encoders": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "import_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "import_memory.md").write_text(markdown(results))
    print((args.results / "import_memory.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
