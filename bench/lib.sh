# Shell functions the benchmark scripts share; sourced, not run.

# listening_port LOG: the port a Lucid node logging to LOG listens on,
# once it says so (at most 30 s); empty if it never does.
listening_port() {
  local port=""
  for _ in $(seq 1 300); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\) (.*/\1/p' "$1" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  echo "$port"
}

# write_doc_section HEADING FILE: puts FILE's text, as a code block, under
# "## HEADING" in docs/BENCHMARKS.md, in the part bench/run.sh keeps when it
# rewrites the rest (replacing that section if it is there).
write_doc_section() {
  python3 - "$1" "$2" docs/BENCHMARKS.md <<'PY'
import sys
heading, text_path, doc_path = sys.argv[1], sys.argv[2], sys.argv[3]
marker = "<!-- kept by bench/run.sh: the sections below come from bench/replication.sh and bench/mqtt.sh -->"
doc = open(doc_path).read()
if marker not in doc:
    doc = doc.rstrip("\n") + "\n\n" + marker + "\n"
head, kept = doc.split(marker, 1)
section = "## " + heading + "\n\n```text\n" + open(text_path).read().rstrip("\n") + "\n```\n"
parts = kept.split("\n## ")
parts = [p for p in parts if not p.startswith(heading + "\n")]
kept = "\n## ".join(parts).rstrip("\n") + "\n\n" + section
open(doc_path, "w").write(head + marker + kept)
PY
}
