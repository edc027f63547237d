#!/usr/bin/env python3
"""Tokenize text or JSONL into a Megatron-LM indexed dataset (PREFIX.bin + PREFIX.idx).

The layout is the one megatron-core's IndexedDatasetBuilder writes (docs/DATA.md gives it byte
by byte, with the version it was checked against): one sequence per document, document indices
0, 1, ..., n, tokens as uint16 when the vocabulary has fewer than 65,500 entries (Megatron's own
rule) and int32 otherwise. Megatron's reader (and pmamba's `--data PREFIX`) reads the result.

Tokenization uses the Hugging Face `tokenizers` library and a local tokenizer.json; nothing is
fetched from a hub. The output is written to temporary files and renamed into place (.bin
first, then .idx), so PREFIX.idx exists only once PREFIX.bin is complete.

Exit codes: 0 ok; 2 bad arguments or unreadable / invalid input (a one-line message).
"""

# This file is named like the standard library's `tokenize` module, which `inspect` and
# `linecache` import. Python puts the script's folder first on sys.path, so take it off before
# importing anything else; otherwise this file would be imported in its place.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import array  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

PROG = "tokenize.py"

# megatron/core/datasets/indexed_dataset.py (megatron-core 0.12.3 and 0.16.1).
INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8}
# DType.optimal_dtype: uint16 when the cardinality (the vocabulary size) is < 65500, else int32.
MEGATRON_UINT16_LIMIT = 65500
# array typecodes of the two token types written, and their sizes in bytes.
ARRAY_CODE = {"uint16": "H", "int32": "i"}
ITEM_SIZE = {"uint16": 2, "int32": 4}
MAX_ID = {"uint16": 0xFFFF, "int32": 0x7FFFFFFF}

# Special tokens tried, in this order, by --append-eod when no --eod-token is given.
EOD_NAMES = ("<eod>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "[EOS]")

# Encode this many documents (or this many characters) per call to encode_batch.
BATCH_DOCS = 1024
BATCH_CHARS = 4 << 20


class InputError(Exception):
    """Bad input or arguments: printed as one line, exit 2."""


def fail(message):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- reading documents


def open_binary(path):
    """Opens an input for reading bytes (through gzip when it ends in .gz)."""
    try:
        if path.endswith(".gz"):
            f = gzip.open(path, "rb")
            f.peek(1)  # a file that is not gzip fails here, not halfway through
            return f
        return open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read '{path}': {e.strerror or e}") from None


def input_format(path, forced):
    if forced != "auto":
        return forced
    base = path[:-3] if path.endswith(".gz") else path
    return "jsonl" if base.endswith((".jsonl", ".json", ".ndjson")) else "text"


def decode(path, n, raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{n}: not UTF-8 (byte {e.start + 1} of the line: {e.reason})") from None


def numbered_lines(path):
    """(line number, bytes) of every line, newline included."""
    with open_binary(path) as f:
        try:
            yield from enumerate(f, start=1)
        except (OSError, EOFError) as e:
            raise InputError(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def jsonl_documents(path, key):
    """One document per line: the string under `key`. Blank lines are skipped."""
    for n, raw in numbered_lines(path):
        if not raw.strip():
            continue
        line = decode(path, n, raw)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not a JSON object ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, found {JSON_TYPES.get(type(obj), 'a value')}")
        if key not in obj:
            keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise InputError(f"{path}:{n}: no key '{key}' (keys: {keys}); choose one with --json-key")
        text = obj[key]
        if not isinstance(text, str):
            raise InputError(f"{path}:{n}: '{key}' is {JSON_TYPES.get(type(text), 'a value')}, not a string")
        yield text, len(raw)


def text_documents(path, mode):
    """Plain UTF-8 text. mode 'blank-line': documents are separated by one or more blank lines
    (lines of only whitespace), and a document's lines keep their newlines except the last one's;
    'line': one document per line (blank lines are empty documents, skipped); 'file': the whole
    file is one document."""
    if mode == "file":
        lines = [decode(path, n, raw) for n, raw in numbered_lines(path)]
        text = "".join(lines)
        yield text, len(text.encode("utf-8"))
        return
    if mode == "line":
        for n, raw in numbered_lines(path):
            yield decode(path, n, raw).rstrip("\r\n"), len(raw)
        return
    lines, nbytes = [], 0
    for n, raw in numbered_lines(path):
        nbytes += len(raw)
        if raw.strip():
            lines.append(decode(path, n, raw))
            continue
        if lines:
            yield "".join(lines).rstrip("\r\n"), nbytes
            lines, nbytes = [], 0
    if lines:
        yield "".join(lines).rstrip("\r\n"), nbytes


def documents(args):
    for path in args.input:
        if os.path.isdir(path):
            raise InputError(f"cannot read '{path}': is a directory")
        if not os.path.exists(path):
            raise InputError(f"cannot read '{path}': no such file")
        if input_format(path, args.format) == "jsonl":
            yield from jsonl_documents(path, args.json_key)
        else:
            yield from text_documents(path, args.text_docs)


def batches(docs):
    batch, chars, nbytes = [], 0, 0
    for text, size in docs:
        batch.append(text)
        chars += len(text)
        nbytes += size
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch, nbytes
            batch, chars, nbytes = [], 0, 0
    if batch:
        yield batch, nbytes


# ---------------------------------------------------------------- progress


class Progress:
    """One line on stderr: rewritten in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.shown = False

    def line(self, docs, tokens, nbytes):
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (f"{docs:,} documents, {tokens:,} tokens, {nbytes / 1e6:,.1f} MB read, "
                f"{nbytes / 1e6 / elapsed:,.1f} MB/s")

    def update(self, docs, tokens, nbytes):
        if self.quiet:
            return
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        if self.tty:
            sys.stderr.write("\r\x1b[K" + self.line(docs, tokens, nbytes))
        else:
            sys.stderr.write(self.line(docs, tokens, nbytes) + "\n")
        sys.stderr.flush()
        self.shown = True

    def done(self, docs, tokens, nbytes):
        if self.quiet or not self.shown:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + self.line(docs, tokens, nbytes) + "\n")
        else:
            sys.stderr.write(self.line(docs, tokens, nbytes) + "\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- the tokenizer


def load_tokenizer(path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        fail("the Python package 'tokenizers' is missing: pip install tokenizers")
    if not os.path.isfile(path):
        raise InputError(f"cannot read tokenizer '{path}': no such file")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises a plain Exception
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot load tokenizer '{path}': {msg}") from None


def vocab_size(tok):
    """Megatron's vocab_size for a HF tokenizer is len(tokenizer) (added tokens included); a
    tokenizer.json with holes in its ids needs the largest id + 1."""
    ids = tok.get_vocab(with_added_tokens=True).values()
    return max(tok.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)


def eod_id(tok, args, vocab):
    if args.eod_token is not None:
        spec = args.eod_token
        if spec.lstrip("-").isdigit():
            i = int(spec)
            if not 0 <= i < vocab:
                raise InputError(f"--eod-token {i} is outside the vocabulary (0 .. {vocab - 1})")
            return i
        i = tok.token_to_id(spec)
        if i is None:
            raise InputError(f"--eod-token '{spec}' is not a token of the tokenizer")
        return i
    if not args.append_eod:
        return None
    for name in EOD_NAMES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise InputError("--append-eod: the tokenizer has none of the tokens " + ", ".join(EOD_NAMES) +
                     "; name the EOD token with --eod-token ID (or TOKEN)")


# ---------------------------------------------------------------- writing


def index_bytes(dtype, lengths):
    """The .idx exactly as megatron-core's _IndexWriter writes it for one sequence per document."""
    item = ITEM_SIZE[dtype]
    n = len(lengths)
    pointers = array.array("q", bytes(8 * n))
    p = 0
    for i, length in enumerate(lengths):
        pointers[i] = p
        p += length * item
    doc_index = array.array("q", range(n + 1))
    if sys.byteorder != "little":
        lengths = array.array("i", lengths)
        for a in (lengths, pointers, doc_index):
            a.byteswap()
    return b"".join([
        INDEX_HEADER,
        struct.pack("<Q", INDEX_VERSION),
        struct.pack("<B", DTYPE_CODES[dtype]),
        struct.pack("<Q", n),          # sequence count
        struct.pack("<Q", n + 1),      # document count: entries of the document index
        lengths.tobytes(),             # int32 tokens per sequence
        pointers.tobytes(),            # int64 byte offset of each sequence in the .bin
        doc_index.tobytes(),           # int64 first sequence of each document, then the count
    ])


def write_dataset(args, tok, dtype, eod, progress):
    prefix = args.output
    tmp_bin = f"{prefix}.bin.tmp-{os.getpid()}"
    tmp_idx = f"{prefix}.idx.tmp-{os.getpid()}"
    stats = {"documents": 0, "skipped_empty": 0, "tokens": 0, "bytes_read": 0, "largest": -1}
    lengths = array.array("i")
    code = ARRAY_CODE[dtype]
    limit = MAX_ID[dtype]
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which are not needed.
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    try:
        with open(tmp_bin, "wb") as out:
            for batch, nbytes in batches(documents(args)):
                encodings = encode(batch, add_special_tokens=args.add_special_tokens)
                for enc in encodings:
                    ids = enc.ids
                    if not ids:
                        # Megatron drops an empty document's tokens too (and appends no EOD).
                        stats["skipped_empty"] += 1
                        continue
                    if eod is not None:
                        ids.append(eod)
                    if len(ids) > 0x7FFFFFFF:
                        raise InputError(f"document {stats['documents'] + stats['skipped_empty'] + 1} has "
                                         f"{len(ids):,} tokens, more than an int32 sequence length holds")
                    top = max(ids)
                    if top > limit or min(ids) < 0:
                        raise InputError(f"token id {top} does not fit {dtype}; use --dtype int32")
                    stats["largest"] = max(stats["largest"], top)
                    a = array.array(code, ids)
                    if sys.byteorder != "little":
                        a.byteswap()
                    out.write(a.tobytes())
                    lengths.append(len(ids))
                    stats["documents"] += 1
                    stats["tokens"] += len(ids)
                stats["bytes_read"] += nbytes
                progress.update(stats["documents"], stats["tokens"], stats["bytes_read"])
            out.flush()
            os.fsync(out.fileno())
        progress.done(stats["documents"], stats["tokens"], stats["bytes_read"])
        if stats["documents"] == 0:
            what = "no documents" if stats["skipped_empty"] == 0 else f"only empty documents ({stats['skipped_empty']})"
            raise InputError(f"empty input: {what} in " + ", ".join(args.input))
        with open(tmp_idx, "wb") as out:
            out.write(index_bytes(dtype, lengths))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_bin, prefix + ".bin")
        os.replace(tmp_idx, prefix + ".idx")
        try:
            fd = os.open(os.path.dirname(os.path.abspath(prefix)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    finally:
        for p in (tmp_bin, tmp_idx):
            if os.path.exists(p):
                os.unlink(p)
    return stats


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tokenize text or JSONL with a local Hugging Face tokenizer.json into a Megatron-LM "
                    "indexed dataset: PREFIX.bin (the tokens) and PREFIX.idx (the index), one sequence per "
                    "document, as Megatron's tools/preprocess_data.py lays it out (docs/DATA.md).",
        epilog="""inputs:
  FILE.jsonl (also .json, .ndjson, and any of these + .gz): one JSON object per line; the
      document is the string under --json-key. Blank lines are skipped.
  any other FILE (+ .gz): UTF-8 text; by default documents are separated by one or more blank
      lines (--text-docs blank-line). --text-docs line: one document per line;
      --text-docs file: each file is one document.
  Several --input are concatenated in the order given. A document that tokenizes to no tokens
  (an empty string) is skipped and counted, as Megatron's preprocess_data.py stores no tokens
  for it; every other document becomes one sequence, followed by the EOD token with
  --append-eod or --eod-token.

example:
  python3 scripts/tokenize.py --tokenizer tests/fixtures/data/tokenizer.json \\
      --input tests/fixtures/data/corpus.jsonl --output /tmp/corpus --append-eod
  build/bin/pmamba-train --preset small --data /tmp/corpus ...

exit codes: 0 ok, 2 bad arguments or unreadable or invalid input.""")
    p.add_argument("--tokenizer", required=True, metavar="FILE",
                   help="a local tokenizer.json (Hugging Face tokenizers); never fetched from a hub")
    p.add_argument("--input", required=True, action="append", metavar="FILE",
                   help="a .jsonl or text file (repeat for more; read in order)")
    p.add_argument("--output", required=True, metavar="PREFIX",
                   help="writes PREFIX.bin and PREFIX.idx (replacing them atomically)")
    p.add_argument("--json-key", default="text", metavar="KEY", help="the JSONL key holding a document (default: text)")
    p.add_argument("--format", choices=["auto", "jsonl", "text"], default="auto",
                   help="how to read every input (default auto: .jsonl/.json/.ndjson are JSONL, the rest text)")
    p.add_argument("--text-docs", choices=["blank-line", "line", "file"], default="blank-line",
                   help="what a document is in a text input (default: blank-line separated)")
    eod = p.add_mutually_exclusive_group()
    eod.add_argument("--append-eod", action="store_true",
                     help="append the tokenizer's EOD token to every document: the first of "
                          + ", ".join(EOD_NAMES) + " it has")
    eod.add_argument("--eod-token", metavar="ID|TOKEN",
                     help="append this token (an id or a token string) to every document")
    p.add_argument("--dtype", choices=["auto", "uint16", "int32"], default="auto",
                   help="token type in the .bin; auto (the default, Megatron's rule): uint16 when the "
                        "vocabulary has fewer than 65,500 tokens, else int32")
    p.add_argument("--add-special-tokens", action="store_true",
                   help="apply the tokenizer's post-processor (its BOS/EOS template) to every document, "
                        "as Megatron does with --tokenizer-hf-include-special-tokens; by default, as "
                        "Megatron's HuggingFaceTokenizer does, the text's tokens alone")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    args = p.parse_args(argv)
    base = os.path.basename(args.output)
    if not base or base.endswith((".bin", ".idx")):
        p.error(f"--output is a prefix (PREFIX.bin and PREFIX.idx are written), not '{args.output}'")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise InputError(f"cannot write '{args.output}.bin': folder '{out_dir}' does not exist")
        for path in args.input:  # before any work; read errors are still caught where they occur
            if not os.path.exists(path):
                raise InputError(f"cannot read '{path}': no such file")
            if os.path.isdir(path):
                raise InputError(f"cannot read '{path}': is a directory")
        tok = load_tokenizer(args.tokenizer)
        vocab = vocab_size(tok)
        if args.dtype == "auto":
            dtype = "uint16" if vocab < MEGATRON_UINT16_LIMIT else "int32"
        else:
            dtype = args.dtype
            if dtype == "uint16" and vocab > 0x10000:
                raise InputError(f"--dtype uint16: the vocabulary has {vocab:,} tokens, more than 65,536")
        eod = eod_id(tok, args, vocab)
        stats = write_dataset(args, tok, dtype, eod, Progress(args.quiet))
    except InputError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    bin_bytes = os.path.getsize(args.output + ".bin")
    idx_bytes = os.path.getsize(args.output + ".idx")
    skipped = f" ({stats['skipped_empty']:,} empty skipped)" if stats["skipped_empty"] else ""
    print(f"documents:  {stats['documents']:,}{skipped}")
    print(f"tokens:     {stats['tokens']:,}")
    print(f"dtype:      {dtype} (code {DTYPE_CODES[dtype]})")
    print(f"vocab size: {vocab:,}")
    print(f"largest id: {stats['largest']}")
    print(f"eod id:     {'none' if eod is None else eod}")
    print(f"wrote:      {args.output}.bin ({bin_bytes:,} bytes), {args.output}.idx ({idx_bytes:,} bytes)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the summary piped into `head`: the files are written already
        sys.stdout = None
        sys.exit(0)
