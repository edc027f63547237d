#!/usr/bin/env bash
# pmamba-report on a real run: a tiny training run (12 steps, evaluated every 4) with 3
# checkpoints gives one HTML page that parses (python3's html.parser), holds the plots with the
# right point counts (12 for loss, 3 for eval loss) and the table of the 3 checkpoints, each
# verified "ok"; a damaged checkpoint shows its problem; a malformed
# metrics line exits 2 naming the line, a truncated last line is a warning. With "render" as
# the second argument (cli.report_render) it then renders the page headless in chromium and the
# screenshot must not be blank; without chromium that check exits 77 (CTest: skipped).
set -u
BIN=$1
source "$(dirname "$0")/lib.sh"

mkdir -p "$T/r"  # --metrics needs its directory to exist
run "$BIN/pmamba-train" --preset tiny --data selective-copy --steps 12 --ckpt-every 4 --eval-every 4 --ckpt-dir "$T/r" \
    --metrics "$T/r/metrics.jsonl" --quiet
expect_code 0

run "$BIN/pmamba-report" "$T/r"
expect_code 0
expect_out "wrote $T/r/report.html: 12 steps"
expect_out "3 checkpoints"
[ -f "$T/r/report.html" ] || fail "no $T/r/report.html"

# The page, as a parser sees it: the plots and their series, the checkpoint rows.
cat >"$T/check.py" <<'EOF'
import sys
from html.parser import HTMLParser

class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.plots, self.series, self.rows, self.stack = {}, {}, [], []
        self.row, self.cell, self.scripts, self.external = None, None, 0, []
        self.columns, self.th, self.in_ckpt_table, self.mismatched = [], None, False, []
    VOID = ("meta", "line", "circle", "polyline", "rect", "br")
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "table":
            self.in_ckpt_table = a.get("class") == "checkpoints"
        if tag == "th" and self.in_ckpt_table:
            self.th = ""
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if k in a:
                self.external.append(a[k])
        if tag == "svg" and "plot" in a.get("class", "").split():
            self.plots[a["data-metric"]] = int(a["data-points"])
        if tag == "polyline" and "series" in a.get("class", "").split():
            n = int(a["data-points"])
            vertices = len(a["points"].split()) if a["points"] else 0
            if vertices != n:
                sys.exit("series %s: data-points %d but %d vertices" % (a["data-series"], n, vertices))
            self.series[a["data-series"]] = n
        if tag == "tr" and a.get("class") == "ckpt":
            self.row = {"step": int(a["data-step"]), "verify": a["data-verify"], "cells": []}
        if tag == "td" and self.row is not None:
            self.cell = ""
    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.mismatched.append(tag)
        if tag == "th" and self.th is not None:
            self.columns.append(self.th.strip())
            self.th = None
        if tag == "td" and self.row is not None:
            self.row["cells"].append(self.cell.strip())
            self.cell = None
        if tag == "tr" and self.row is not None:
            self.rows.append(self.row)
            self.row = None
    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.th is not None:
            self.th += data

p = Page()
p.feed(open(sys.argv[1], encoding="utf-8").read())
p.close()
want_steps = int(sys.argv[2])
errors = []
if p.stack or p.mismatched:
    errors.append("unclosed elements: %s, mismatched end tags: %s" % (p.stack, p.mismatched))
if p.scripts or p.external:
    errors.append("script or external resources: %d %s" % (p.scripts, p.external))
for metric in ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "bubble"):
    if p.plots.get(metric) != want_steps:
        errors.append("plot %s: data-points %s, expected %d" % (metric, p.plots.get(metric), want_steps))
    if p.series.get(metric) != want_steps:
        errors.append("series %s: data-points %s, expected %d" % (metric, p.series.get(metric), want_steps))
want_rows = [(int(s), v) for s, v in (x.split(":") for x in sys.argv[3].split(","))]
got_rows = [(r["step"], r["verify"]) for r in p.rows]
if got_rows != want_rows:
    errors.append("checkpoint rows %s, expected %s" % (got_rows, want_rows))
for r in p.rows:
    c = dict(zip(p.columns, r["cells"]))
    directory, size, tensors, latest, status = (c.get(k, "") for k in ("directory", "bytes on disk", "tensors", "latest", "verify"))
    if directory != "step-%08d" % r["step"]:
        errors.append("row %d: directory %r" % (r["step"], directory))
    if not size.split(" ")[0].replace(",", "").isdigit() or not tensors.isdigit() or int(tensors) < 1:
        errors.append("row %d: bytes %r tensors %r" % (r["step"], size, tensors))
    if (latest == "latest") != (r["step"] == p.rows[-1]["step"]):
        errors.append("row %d: latest %r" % (r["step"], latest))
    if (status == "ok") != (r["verify"] == "ok"):
        errors.append("row %d: verify cell %r but data-verify %r" % (r["step"], status, r["verify"]))
# Series with fewer points (eval): "KEY:N,..." (the eval series only at the steps that evaluated).
for spec in (sys.argv[4].split(",") if len(sys.argv) > 4 else []):
    key, n = spec.split(":")
    if p.series.get(key) != int(n):
        errors.append("series %s: data-points %s, expected %s" % (key, p.series.get(key), n))
if errors:
    sys.exit("\n".join(errors))
print("PAGE OK: %d plots, %d checkpoints" % (len(p.plots), len(p.rows)))
EOF
run python3 "$T/check.py" "$T/r/report.html" 12 "4:ok,8:ok,12:ok" "eval_loss:3,eval_accuracy:3"
expect_code 0
expect_out "PAGE OK: 6 plots, 3 checkpoints"

# -o elsewhere; a damaged checkpoint (its shard cut short) is reported in its row, not fatal.
cp -r "$T/r" "$T/r2"
shard=$(ls "$T/r2/step-00000008/"*.h5 | head -1)
truncate -s 1000 "$shard"
run "$BIN/pmamba-report" "$T/r2" -o "$T/r2.html"
expect_code 0
expect_out "wrote $T/r2.html"
expect_out "(1 failed verification)"
run python3 "$T/check.py" "$T/r2.html" 12 "4:ok,8:failed,12:ok"
expect_code 0
run "$BIN/pmamba-report" "$T/r2" -o "$T/r3.html" --no-verify --quiet
expect_code 0
[ -s "$T/r3.html" ] && [ ! -s "$T/out" ] || fail "--quiet printed, or wrote nothing"
grep -q 'data-verify="skipped"' "$T/r3.html" || fail "--no-verify rows are not marked skipped"

# A resumed run's repeated steps: the last line per step wins (steps stay 12), and a truncated
# last line is a warning.
{ cat "$T/r/metrics.jsonl"; echo '{"run_id": "again", "start_step": 8, "resumed_from": "step-00000008"}';
  for s in 9 10 11 12; do echo "{\"step\": $s, \"loss\": 1.5, \"accuracy\": 0.1, \"lr\": 0.001, \"grad_norm\": 1, \"tokens_per_s\": 10, \"bubble\": 0}"; done
  printf '{"step": 13, "loss": 1.'; } >"$T/resumed.jsonl"
run "$BIN/pmamba-report" "$T/r" --metrics "$T/resumed.jsonl" -o "$T/resumed.html"
expect_code 0
expect_err "line $(wc -l <"$T/resumed.jsonl" | awk '{print $1 + 1}') is cut short"
run python3 "$T/check.py" "$T/resumed.html" 12 "4:ok,8:ok,12:ok"
expect_code 0
grep -q "4 step lines were written again by a resumed run" "$T/resumed.html" || fail "resume not noted"

# Errors: exit 2 with one line naming the problem.
{ head -3 "$T/r/metrics.jsonl"; echo '{"step": 3, "loss": [}'; tail -n +4 "$T/r/metrics.jsonl"; } >"$T/bad.jsonl"
run "$BIN/pmamba-report" "$T/r" --metrics "$T/bad.jsonl" -o "$T/bad.html"
expect_code 2; expect_err_line "metrics file '$T/bad.jsonl' line 4: not a JSON object"
[ ! -e "$T/bad.html" ] || fail "a page was written for a malformed metrics file"
run "$BIN/pmamba-report" "$T/nope"
expect_code 2; expect_err_line "is not a directory"
run "$BIN/pmamba-report" "$T/r/step-00000004"
expect_code 2; expect_err_line "is a step directory"
run "$BIN/pmamba-report" "$T/r" --metrics "$T/missing.jsonl"
expect_code 2; expect_err_line "missing.jsonl"
run "$BIN/pmamba-report" "$T/r" -o "$T/no/such/dir/x.html"
expect_code 2; expect_err_line "x.html"
run "$BIN/pmamba-report"
expect_code 2; expect_err_line "run_dir"

# Rendering (ctest's cli.report_render, which runs this script with "render"): a headless browser
# draws the page; the screenshot must have content. cli.report itself stops here, so its result
# never hides behind a skip.
if [ "${2:-}" != "render" ]; then finish; exit; fi
# PMAMBA_CHROMIUM names the browser (empty: none, the check is skipped); else PATH is searched.
CHROME=""
if [ -n "${PMAMBA_CHROMIUM+set}" ]; then
  CHROME=$PMAMBA_CHROMIUM
else
  for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then CHROME=$c; break; fi
  done
fi
if [ -z "$CHROME" ]; then
  echo "SKIP: chromium not installed (rendering check)"
  [ "$FAILS" -eq 0 ] || finish
  exit 77
fi
rm -f "$T/out.png"
timeout 180 "$CHROME" --headless --disable-gpu --no-sandbox --hide-scrollbars --user-data-dir="$T/chrome" \
    --screenshot="$T/out.png" --window-size=1200,2000 "file://$T/r/report.html" >"$T/chrome.log" 2>&1
[ -s "$T/out.png" ] || { LAST_CMD="$CHROME --screenshot"; fail "no screenshot: $(tail -3 "$T/chrome.log")"; }
cat >"$T/png.py" <<'EOF'
# Decodes an 8-bit RGB/RGBA PNG (stdlib only) and reports how much of it is not background.
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        assert depth == 8 and ctype in (2, 6), "unsupported PNG: depth %d colour type %d" % (depth, ctype)
        bpp = 3 if ctype == 2 else 4
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
raw, stride = zlib.decompress(idat), w * bpp
prev, colors, counts = bytearray(stride), set(), {}
for y in range(h):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp * 2):  # every other pixel is plenty
        px = bytes(line[x:x + 3])
        counts[px] = counts.get(px, 0) + 1
    prev = line
total = sum(counts.values())
background = max(counts.values())
print("%dx%d, %d colours, %.1f%% not background" % (w, h, len(counts), 100.0 * (total - background) / total))
sys.exit(0 if len(counts) >= 16 and total - background >= total * 0.01 else 1)
EOF
run python3 "$T/png.py" "$T/out.png"
expect_code 0
echo "rendered: $(cat "$T/out")"
finish
