"""The metrics captioning papers report, as the COCO caption evaluation computes them
(pycocoevalcap): BLEU-1..4, ROUGE-L, CIDEr-D and, where Java is installed, METEOR.

Captions are scored as the project's normalised words (lower case, no punctuation: vocab.normalise),
so the evaluation's own PTB tokenizer (a Java program) is not needed. SPICE is left out: it
downloads Stanford CoreNLP on first use, which these machines cannot reach.
"""
from __future__ import annotations

import contextlib
import io
import shutil

from .vocab import normalise

METEOR_MISSING = "METEOR not computed: it runs a Java program and no `java` is installed"


def java_available() -> bool:
    return shutil.which("java") is not None


def coco_metrics(hypotheses: list[list[str]], references: list[list[str]], meteor: bool | None = None) -> dict:
    """{"coco_bleu1".."coco_bleu4", "rouge_l", "cider_d"[, "meteor"]} of greedy captions (words)
    against each image's reference captions (text). `meteor`: None = where Java is installed."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"{len(hypotheses)} captions for {len(references)} sets of references")
    res = {i: [" ".join(words)] for i, words in enumerate(hypotheses)}
    gts = {i: [" ".join(normalise(r)) for r in refs] for i, refs in enumerate(references)}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its lengths
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"coco_bleu{n}": float(b) for n, b in enumerate(bleu, 1)}
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider_d"] = float(Cider().compute_score(gts, res)[0])
    if meteor or (meteor is None and java_available()):
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            scores["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer  # its __del__ ends the Java process
    return scores
