"""count-words-py: the middle of the polyglot text pipeline (Rust `normalize`
-> this -> JavaScript `top-k-js`). Adds `counts` (word -> count) and `total`
for the words of `text`, split on whitespace, and keeps the other args: the
same result as the Rust `count-words`."""

import corral


@corral.handler
def count_words(args):
    text = args.get("text")
    if not isinstance(text, str):
        raise corral.Fatal("arg `text` must be a string")
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    total = sum(counts.values())
    out = {**args, "counts": dict(sorted(counts.items())), "total": total}
    return out, f"counted {total} words, {len(counts)} distinct"
