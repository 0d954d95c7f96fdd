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
