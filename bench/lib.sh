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

# need COMMAND PACKAGE: installs Debian's PACKAGE unless COMMAND is on the
# PATH (needs root).
need() {
  command -v "$1" >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# nginx_conf DIR PORT: writes DIR/nginx.conf for nginx in the foreground on
# 127.0.0.1:PORT, one worker, its files in DIR, answering a fixed 100-byte
# body at / and serving DIR/w5/ as static files (sendfile on, as it ships).
nginx_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
  server {
    listen 127.0.0.1:$2;
    location / { return 200 "$(printf 'x%.0s' $(seq 1 100))"; }
    location /w5/ { root $1; }
  }
}
EOF
}
