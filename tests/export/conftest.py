"""What the variant tests share: a training run that judges captions by CIDEr-D against its own
model's captions, and converters that break the encoder on purpose."""
import dataclasses
import json

import numpy as np
import pytest


@pytest.fixture
def judged_by_its_own_captions(trained_run, tmp_path):
    """A copy of the session's run (files linked) whose held-out scenes are judged as real data
    are, by CIDEr-D, against float32's own greedy caption. The 6-epoch model names almost no object
    right, so on the scenes' own truth a variant would have no quality to lose; against its own
    captions float32 scores its best, and a variant that captions otherwise scores less."""
    folder = tmp_path / "run"
    folder.mkdir()
    for item in trained_run.iterdir():
        if item.is_file() and item.name not in ("run.json", "heldout.json"):
            (folder / item.name).symlink_to(item)
    run = json.loads((trained_run / "run.json").read_text())
    run["dataset"] = {**run["dataset"], "kind": "flickr8k"}
    heldout = [{**h, "references": [h["keras_greedy"]]} for h in json.loads((trained_run / "heldout.json").read_text())]
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "heldout.json").write_text(json.dumps(heldout))
    return folder


def broken_on_purpose(precision):
    """`precision` whose converted encoder has every convolution's output channels shuffled
    (a well-formed graph whose features mean nothing), as a faulty converter might leave it."""
    import onnx
    from onnx import numpy_helper

    def convert(source, target, context):
        figures = precision.convert(source, target, context)
        model = onnx.load(str(target))
        rng = np.random.default_rng(0)
        for weight in model.graph.initializer:
            if len(weight.dims) == 4:
                values = numpy_helper.to_array(weight)
                weight.CopyFrom(numpy_helper.from_array(values[rng.permutation(len(values))], weight.name))
        onnx.save(model, str(target))
        return figures

    return dataclasses.replace(precision, convert=convert)
