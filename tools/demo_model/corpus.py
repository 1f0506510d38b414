#!/usr/bin/env python3
"""Builds the demo model's corpus: three public-domain Bibles (English KJV and WEB, Spanish
Reina-Valera 1909) read from Debian's sword-text-* packages, one verse a line, with a held-out
split of whole books.

The packages are fetched with `apt-get download` and unpacked with `dpkg -x` (no root needed)
into --work. SWORD zText modules are zlib blocks (*.bzz) indexed by *.bzs (u32 offset, u32
size, u32 uncompressed size) and verses indexed by *.bzv (u32 block, u32 offset, u16 size);
verse text is OSIS XML, of which we keep the words and drop notes and titles.

Usage: python3 corpus.py --work /tmp/demo-corpus --out DIR
  writes DIR/train.txt, DIR/heldout.txt, DIR/sources.json and DIR/verses.jsonl (every verse of
  both splits with its Bible, book name, chapter, verse and split, for chat_data.py)
"""
import argparse
import glob
import hashlib
import html
import json
import os
import re
import struct
import subprocess
import zlib

# package -> (module directory, language)
SOURCES = {
    "sword-text-kjv": ("engKJV2006eb", "en"),
    "sword-text-web": ("engWEB2015eb", "en"),
    "sword-text-sparv": ("spaRV1909eb", "es"),
}

NOTE = re.compile(r"<note\b.*?</note>", re.S)
TITLE = re.compile(r"<title\b.*?</title>", re.S)
TAG = re.compile(r"<[^>]*>")
SPACE = re.compile(r"\s+")


def fetch(work):
    debs = os.path.join(work, "debs")
    root = os.path.join(work, "root")
    os.makedirs(debs, exist_ok=True)
    for pkg in SOURCES:
        if not glob.glob(os.path.join(debs, pkg + "_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
    versions = {}
    for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
        subprocess.run(["dpkg", "-x", deb, root], check=True)
        name = os.path.basename(deb).split("_")
        versions[name[0]] = {"version": name[1], "sha256": hashlib.sha256(open(deb, "rb").read()).hexdigest()}
    return root, versions


USFM_H = re.compile(r'<milestone n="([^"]*)" type="x-usfm-h"')
CHAPTER = re.compile(r'<chapter\b[^>]*\bn="(\d+)"[^>]*\bsID=')


def verses(moddir, refs=None):
    """Yields every verse's plain text, Old Testament then New, in canonical order; if refs is a
    list, appends each yielded verse's (book name, chapter, verse) to it: the book name is the
    module's own (its x-usfm-h milestone), verses count the index slots after a chapter's."""
    name, chapter, verse = "", 0, 0
    for testament in ("ot", "nt"):
        bzs = open(os.path.join(moddir, testament + ".bzs"), "rb").read()
        bzz = open(os.path.join(moddir, testament + ".bzz"), "rb").read()
        bzv = open(os.path.join(moddir, testament + ".bzv"), "rb").read()
        blocks = []
        for i in range(len(bzs) // 12):
            off, size, _ = struct.unpack_from("<III", bzs, i * 12)
            blocks.append(zlib.decompress(bzz[off:off + size]) if size else b"")
        for i in range(len(bzv) // 10):
            b, off, size = struct.unpack_from("<IIH", bzv, i * 10)
            verse += 1
            if not size:
                continue
            raw = blocks[b][off:off + size].decode("utf-8")
            book = re.search(r'<div[^>]*\bsID="[^"]*"[^>]*type="book"', raw) is not None
            if book:
                m = USFM_H.search(raw)
                name, chapter, verse = (html.unescape(m.group(1)) if m else ""), 0, 0
            m = CHAPTER.search(raw)
            if m:
                chapter, verse = int(m.group(1)), 0
            text = html.unescape(TAG.sub(" ", TITLE.sub(" ", NOTE.sub(" ", raw))))
            text = SPACE.sub(" ", text).strip()
            text = re.sub(r" ([,.;:!?)’”])", r"\1", text)
            text = re.sub(r"([(‘“¿¡]) ", r"\1", text)
            if refs is not None:
                refs.append((name, chapter, verse))
            yield book, text


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default="/tmp/demo-corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout-every", type=int, default=20,
                    help="every Nth book of each Bible is held out (default 20)")
    args = ap.parse_args()
    root, versions = fetch(args.work)
    os.makedirs(args.out, exist_ok=True)
    train, held = [], []
    stats = {}
    index = []
    for pkg, (mod, lang) in SOURCES.items():
        moddir = os.path.join(root, "usr/share/sword/modules/texts/ztext", mod)
        n_book, n = -1, [0, 0]
        refs = []
        for book_start, text in verses(moddir, refs):
            if book_start:
                n_book += 1
            if not text:
                continue
            h = n_book % args.heldout_every == args.heldout_every - 1
            (held if h else train).append(text)
            book, chapter, verse = refs[-1]
            if chapter and verse:
                index.append({"bible": pkg, "lang": lang, "book": book, "chapter": chapter,
                              "verse": verse, "split": "heldout" if h else "train", "text": text})
            n[h] += len(text.encode())
        stats[pkg] = {"module": mod, "language": lang, "books": n_book + 1,
                      "train_bytes": n[0], "heldout_bytes": n[1], **versions.get(pkg, {})}
    with open(os.path.join(args.out, "train.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(train) + "\n")
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(held) + "\n")
    with open(os.path.join(args.out, "verses.jsonl"), "w", encoding="utf-8") as f:
        for v in index:
            f.write(json.dumps(v, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "sources.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
