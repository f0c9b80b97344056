#!/usr/bin/env bash
# Checks docker/Dockerfile without Docker, which cannot run on these machines: replays its two
# stages with the same inputs, paths, user and commands.
#
#  1. Build stage: copies exactly the files the stage COPYs (after Dockerfile.dockerignore)
#     into a scratch context and runs the stage's `cargo build --locked --release` there, so a
#     file the build needs but the Dockerfile forgets fails here as it would in `docker build`.
#  2. Runtime stage: in fresh mount and network namespaces (a container's isolation, without
#     the image's root filesystem: the machine's Debian 12 stands in for debian:bookworm-slim),
#     puts the binary and the shipped config where the image does, runs ENTRYPOINT + CMD as the
#     image's USER, polls the HEALTHCHECK command until it passes, proxies requests to demo
#     agents reached by the compose service names (stable, canary), checks that the process
#     runs unprivileged, stops it with STOPSIGNAL and expects a clean exit; the HEALTHCHECK
#     command must then fail.
#
# Needs root (for the namespaces), python3 and curl. Leaves the binary in
# $CARGO_TARGET_DIR/release/cohort (default target/), which tests/prometheus.sh can reuse:
#   bash docker/check-image.sh && COHORT_BIN=target/release/cohort bash tests/prometheus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CONTEXT=$CARGO_TARGET_DIR/docker-context
mkdir -p "$CARGO_TARGET_DIR"
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }

# --- Read the Dockerfile ------------------------------------------------------------------
python3 - "$REPO/docker/Dockerfile" > "$CARGO_TARGET_DIR/dockerfile.sh" <<'PY'
import json, shlex, sys
steps, cur = [], ""
for line in open(sys.argv[1]):
    s = line.strip()
    if not cur and (not s or s.startswith("#")):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    cur += s
    word, _, rest = cur.partition(" ")
    steps.append((word.upper(), rest.strip()))
    cur = ""
froms = [i for i, (w, _) in enumerate(steps) if w == "FROM"]
assert len(froms) == 2, "expected a build stage and a runtime stage"
build, runtime = steps[froms[0]:froms[1]], steps[froms[1]:]
out = {}
copies = []
for w, r in build:
    if w == "COPY":
        copies += r.split()[:-1]
    if w == "RUN" and "cargo build" in r:
        cmd = r[r.index("cargo build"):].split("&&")[0].strip()
        out["BUILD_CMD"] = cmd
        install = r.split("&&")[1].split()
        out["BUILD_OUT"] = install[-1]
print("BUILD_COPIES=(%s)" % " ".join(shlex.quote(c) for c in copies))
for w, r in runtime:
    if w == "COPY" and r.startswith("--from=build"):
        src, dest = r.split()[1:3]
        out["BIN_SRC"], out["BIN_DEST"] = src, dest
    elif w == "COPY":
        src, dest = r.split()
        out["CONFIG_SRC"], out["CONFIG_DEST"] = src, dest
    elif w == "USER":
        out["RUN_USER"] = r
    elif w == "STOPSIGNAL":
        out["STOP_SIGNAL"] = r
    elif w in ("ENTRYPOINT", "CMD"):
        print("%s=(%s)" % ("IMAGE_" + w, " ".join(shlex.quote(a) for a in json.loads(r))))
    elif w == "HEALTHCHECK":
        print("HEALTH=(%s)" % " ".join(shlex.quote(a) for a in json.loads(r[r.index("CMD ") + 4:])))
for k, v in out.items():
    print("%s=%s" % (k, shlex.quote(v)))
PY
# shellcheck disable=SC1091
source "$CARGO_TARGET_DIR/dockerfile.sh"
[ "$BUILD_CMD" = "cargo build --locked --release" ] || fail "the build stage runs '$BUILD_CMD'"
[ "$BIN_SRC" = "$BUILD_OUT" ] || fail "the runtime copies $BIN_SRC but the build installs $BUILD_OUT"
uid=${RUN_USER%%:*}; gid=${RUN_USER##*:}
[ "$uid" -gt 0 ] 2>/dev/null || fail "USER $RUN_USER is not a numeric non-root user"

# --- 1. Build stage --------------------------------------------------------------------------
echo "== build stage: ${BUILD_COPIES[*]} -> $BUILD_CMD"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
allowed=$(sed -n 's/^!//p' docker/Dockerfile.dockerignore)
for src in "${BUILD_COPIES[@]}"; do
  src=${src%/}
  grep -qxF -e "$src" -e "$src/" <<<"$allowed" || fail "$src is excluded by Dockerfile.dockerignore"
  cp -a --parents "$src" "$CONTEXT/"
done
(cd "$CONTEXT" && $BUILD_CMD)
BIN=$CARGO_TARGET_DIR/release/cohort
[ -x "$BIN" ] || fail "no binary at $BIN"

# --- 2. Runtime stage ------------------------------------------------------------------------
echo "== runtime stage: as $RUN_USER, ${IMAGE_ENTRYPOINT[*]} ${IMAGE_CMD[*]}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp "$BIN" "$WORK/cohort"
chmod 0755 "$WORK" "$WORK/cohort"
export BIN_DEST CONFIG_SRC CONFIG_DEST STOP_SIGNAL WORK uid gid REPO
export IMAGE_LINE="${IMAGE_ENTRYPOINT[*]} ${IMAGE_CMD[*]}" HEALTH_LINE="${HEALTH[*]}"
# A PID namespace too: when its first process ends, the kernel ends every process in it.
unshare --mount --net --pid --fork --mount-proc --kill-child bash -euo pipefail <<'NS'
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }
ip link set lo up
# The image's paths, on layers private to this mount namespace.
mkdir -p "$WORK/etc-up" "$WORK/etc-work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/etc-up,workdir=$WORK/etc-work" /etc
mount -t tmpfs -o mode=0755 tmpfs "$(dirname "$BIN_DEST")"
install -m 0755 "$WORK/cohort" "$BIN_DEST"
install -D -m 0644 "$REPO/$CONFIG_SRC" "$CONFIG_DEST"
# docker-compose's service names, on this loopback.
printf '127.0.0.2 stable\n127.0.0.3 canary\n' >> /etc/hosts
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
# The image's USER, without capabilities (an array, not a function, so `$!` is cohort's pid).
as_image_user=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all)
"${as_image_user[@]}" "$BIN_DEST" demo-agent --name stable --bind 127.0.0.2 --port 8000 2>/dev/null & pids+=($!)
"${as_image_user[@]}" "$BIN_DEST" demo-agent --name canary --bind 127.0.0.3 --port 8000 2>/dev/null & pids+=($!)
read -r -a image <<<"$IMAGE_LINE"
read -r -a health <<<"$HEALTH_LINE"
"${as_image_user[@]}" "${image[@]}" 2>"$WORK/cohort.log" & main=$!; pids+=($main)
healthy=""
for _ in $(seq 100); do
  if "${as_image_user[@]}" "${health[@]}" 2>/dev/null; then healthy=yes; break; fi
  kill -0 "$main" 2>/dev/null || { cat "$WORK/cohort.log" >&2; fail "cohort exited"; }
  sleep 0.1
done
[ -n "$healthy" ] || { cat "$WORK/cohort.log" >&2; fail "HEALTHCHECK never passed: ${health[*]}"; }
echo "HEALTHCHECK passes: ${health[*]}"
[ "$(ps -o uid= -p "$main" | tr -d ' ')" = "$uid" ] || fail "cohort does not run as uid $uid"
ps -o user=,uid=,gid=,args= -p "$main"
# Requests reach both agents through the compose host names.
seen=""
for i in $(seq 200); do
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if cohort=$(curl -fsS -o /dev/null -D - "http://127.0.0.1:8080/v1/chat" -H "x-user-id: user-$i" \
        | tr -d '\r' | sed -n 's/^x-cohort: //p'); then break; fi
    sleep 0.2  # the agents may still be starting
  done
  case " $seen " in *" $cohort "*) ;; *) seen="$seen $cohort" ;; esac
  case "$seen" in *stable*canary*|*canary*stable*) break ;; esac
done
case "$seen" in *stable*canary*|*canary*stable*) echo "proxied to:$seen" ;; *) fail "cohorts reached:$seen" ;; esac
kill -s "${STOP_SIGNAL#SIG}" "$main"
rc=0; wait "$main" || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/cohort.log" >&2; fail "cohort exited $rc after $STOP_SIGNAL"; }
echo "$STOP_SIGNAL: exit 0"
if "${as_image_user[@]}" "${health[@]}" 2>/dev/null; then fail "HEALTHCHECK passes with cohort stopped"; fi
echo "HEALTHCHECK fails once cohort is stopped"
NS
echo "== ok: the image builds what 'cargo build --locked --release' builds, and runs as designed"
