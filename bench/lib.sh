# Shared by the bench scripts (sourced): the release binary, a work directory whose processes
# are killed on exit, free ports, and nginx as the service behind the tunnels.

# Builds the release binary; sets $piko.
# The piko binary to measure: $PIKO_BIN when set (to compare builds), else a fresh release build.
build_piko() {
  if [ -n "${PIKO_BIN:-}" ]; then
    piko=$PIKO_BIN
    return
  fi
  echo "building (release) ..." >&2
  cargo build -q --release -p piko-cli
  piko=target/release/piko
}

# A work directory, removed on exit with every process whose PID is added to $pids.
work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as an unprivileged user
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Ports for processes started with fixed addresses: bind :0, note the port, release it.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# nginx on 127.0.0.1:$1 serving /hello (13 bytes) and /big ($2 MiB), keep-alive, no access log.
start_nginx() {
  local port=$1 mib=$2
  mkdir -p "$work/www" "$work/logs"
  printf 'Hello, world!' >"$work/www/hello"
  head -c "$((mib * 1048576))" /dev/zero >"$work/www/big" # a real file: sparse ones are served slower
  cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/logs/error.log;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    root $work/www;
  }
}
CONF
  nginx -c "$work/nginx.conf" -p "$work" &
  pids+=($!)
}
