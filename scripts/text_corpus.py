"""Writes a corpus of real English sentences for the text benchmarks: the first sentence of
every docstring in the Python standard library's source (parsed with ast, nothing imported),
6 to 40 words, de-duplicated, shuffled with a fixed seed. Standard library only.

Usage: text_corpus.py DOCS.jsonl QUERIES.jsonl DOCS_COUNT QUERIES_COUNT
Lines: {"id": N, "text": "..."}.
"""

import ast
import json
import pathlib
import random
import re
import sys
import sysconfig


def sentences():
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    seen = set()
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            first = re.split(r"(?<=[.!?])\s", " ".join(doc.split()), maxsplit=1)[0]
            words = first.split()
            if 6 <= len(words) <= 40 and first not in seen and first.isascii():
                seen.add(first)
                yield first


def main(docs_path, queries_path, docs_count, queries_count):
    corpus = list(sentences())
    random.Random(7).shuffle(corpus)
    need = docs_count + queries_count
    assert len(corpus) >= need, f"only {len(corpus)} sentences, {need} wanted"
    with open(docs_path, "w", encoding="utf-8") as f:
        for i, text in enumerate(corpus[:docs_count]):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    with open(queries_path, "w", encoding="utf-8") as f:
        for i, text in enumerate(corpus[docs_count:need]):
            f.write(json.dumps({"id": i, "text": text}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
