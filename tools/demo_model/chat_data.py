#!/usr/bin/env python3
"""Builds the demo model's chat fine-tuning text: questions answered with verses, in English and
Spanish, rendered through the model's own chat template by transformers' apply_chat_template.

Reads corpus.py's DIR/verses.jsonl. Conversations for training come from the training split
only; those from the held-out books go to a separate file, for the held-out chat loss. Each
conversation asks for a verse by reference ("What does Genesis 1:1 say?"), by its opening words
("How does the verse that begins 'The LORD is my shepherd' go on?") or for the reference of a
verse ("Where is it written: ...?"), in the Bible's language; a quarter have a system message,
a quarter two question/answer pairs. Seeded, so the same corpus gives the same files.

Usage: python chat_data.py --data DIR [--model models/demo-moe] [--seed 1234]
  writes DIR/chat_train.txt and DIR/chat_heldout.txt (one rendered conversation after another)
  and DIR/chat.json (counts, seed)
"""
import argparse
import json
import os
import random

import transformers

SYSTEM = {"en": ["You answer with verses from the Bible.",
                 "You are a helpful assistant who quotes scripture.",
                 "Answer briefly."],
          "es": ["Respondes con versículos de la Biblia.",
                 "Eres un asistente que cita las Escrituras.",
                 "Responde brevemente."]}


def opening(text, n):
    """The verse's first n words (without trailing punctuation)."""
    return " ".join(text.split()[:n]).rstrip(",.;:")


def pair(rng, v):
    """One (question, answer) about verse v, in its Bible's language."""
    ref = f"{v['book']} {v['chapter']}:{v['verse']}"
    kind = rng.random()
    modern = v["bible"] == "sword-text-web"
    if v["lang"] == "en":
        if kind < 0.5:
            q = rng.choice([f"What does {ref} say?", f"Quote {ref}.", f"What is written in {ref}?"])
            if modern:
                q = q[:-1] + " in modern English" + q[-1]
            return q, v["text"]
        if kind < 0.8:
            q = f"How does the verse that begins '{opening(v['text'], rng.randint(3, 6))}' go on?"
            return q, v["text"]
        return f"Where is it written: \"{v['text']}\"?", f"In {ref}."
    if kind < 0.5:
        q = rng.choice([f"¿Qué dice {ref}?", f"Cita {ref}.", f"¿Qué está escrito en {ref}?"])
        return q, v["text"]
    if kind < 0.8:
        q = f"¿Cómo sigue el versículo que empieza «{opening(v['text'], rng.randint(3, 6))}»?"
        return q, v["text"]
    return f"¿Dónde está escrito: «{v['text']}»?", f"En {ref}."


def conversations(rng, verses, n):
    """n rendered-ready message lists; a second turn asks about a verse of the same Bible."""
    by_bible = {}
    for v in verses:
        by_bible.setdefault(v["bible"], []).append(v)
    bibles = sorted(by_bible)
    out = []
    for _ in range(n):
        pool = by_bible[rng.choice(bibles)]
        v = rng.choice(pool)
        msgs = []
        if rng.random() < 0.25:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM[v["lang"]])})
        turns = 2 if rng.random() < 0.25 else 1
        for t in range(turns):
            q, a = pair(rng, v if t == 0 else rng.choice(pool))
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append(msgs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="corpus.py's output directory")
    ap.add_argument("--model", default="models/demo-moe", help="checkpoint whose template renders")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--train", type=int, default=40000, help="training conversations")
    ap.add_argument("--heldout", type=int, default=2000, help="held-out conversations")
    args = ap.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    rng = random.Random(args.seed)
    verses = [json.loads(l) for l in open(os.path.join(args.data, "verses.jsonl"), encoding="utf-8")]
    stats = {"seed": args.seed, "model": args.model, "transformers": transformers.__version__}
    for split, n in (("train", args.train), ("heldout", args.heldout)):
        convs = conversations(rng, [v for v in verses if v["split"] == split], n)
        with open(os.path.join(args.data, f"chat_{split}.txt"), "w", encoding="utf-8") as f:
            for msgs in convs:
                f.write(tok.apply_chat_template(msgs, tokenize=False))
        stats[split] = {"conversations": n,
                        "bytes": os.path.getsize(os.path.join(args.data, f"chat_{split}.txt"))}
    with open(os.path.join(args.data, "chat.json"), "w") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
