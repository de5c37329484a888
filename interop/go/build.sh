#!/usr/bin/env bash
# Build Go Machinery v2 (the unmodified reference tree in ../shared/go-machinery) and this
# repository's Go test programs (cmd/goworker, cmd/goproducer; cmd/gobench for benchmarks/run.py),
# offline, with Debian's Go.
#
#   bash interop/go/build.sh            # prints the directory holding bin/goworker, bin/goproducer
#
# Environment:
#   MACHINERY_SHARED    the shared reference directory (default: <repo>/../shared)
#   MACHINERY_GO_BUILD  build directory, outside the repository's tracked files
#                       (default: <repo>/.nox/_go_interop)
# Installs golang-go and the Debian Go packages listed below when they are missing (needs root
# and the Debian mirror). Rebuilds only when an input changed (a hash of every input is kept in
# the build directory). Any failure exits non-zero: the interop session must fail, not skip.
#
# What is changed in the copied Go tree (see ../shared/go-machinery/README.md), nothing else:
#   - stubs/: stand-ins for github.com/RichardKnop/logging and github.com/go-redsync/redsync/v4
#     (Debian packages neither);
#   - brokers/redis/goredis.go and backends/redis/goredis.go are deleted (go-redis is not
#     packaged; they serve several hosts / cluster mode only);
#   - config/config.go: the AWS, Pub/Sub and MongoDB client imports are dropped and the four
#     client fields become interface{}.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SHARED="${MACHINERY_SHARED:-$REPO/../shared}"
SRC="$SHARED/go-machinery/v2"
BUILD="${MACHINERY_GO_BUILD:-$REPO/.nox/_go_interop}"
DEBIAN_PACKAGES=(
  golang-go
  golang-github-gomodule-redigo-dev
  golang-github-rabbitmq-amqp091-go-dev
  golang-github-google-uuid-dev
  golang-github-robfig-cron-dev
  golang-github-pkg-errors-dev
  golang-gopkg-yaml.v2-dev
  golang-github-kelseyhightower-envconfig-dev
  golang-github-opentracing-opentracing-go-dev
)

say() { echo "[go-interop build] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ -f "$SRC/server.go" ] || die "Go Machinery source not found at $SRC (set MACHINERY_SHARED)"

# ---- Debian's Go and the Go packages ----
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  SUDO=()
  [ "$(id -u)" = 0 ] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
fi
command -v go >/dev/null || die "go not on PATH after installing golang-go"

# ---- cache: hash of every input ----
inputs_hash() {
  {
    go version
    (cd "$SRC" && find . -type f -name '*.go' ! -name '*_test.go' -print0 | sort -z | xargs -0 sha256sum)
    (cd "$HERE" && find build.sh stubs cmd -type f -print0 | sort -z | xargs -0 sha256sum)
    dpkg-query -W "${DEBIAN_PACKAGES[@]}"
  } | sha256sum | cut -d' ' -f1
}
HASH="$(inputs_hash)"
if [ -f "$BUILD/inputs.sha256" ] && [ "$(cat "$BUILD/inputs.sha256")" = "$HASH" ] \
   && [ -x "$BUILD/bin/goworker" ] && [ -x "$BUILD/bin/goproducer" ] && [ -x "$BUILD/bin/gobench" ]; then
  say "up to date in $BUILD"
  echo "$BUILD"
  exit 0
fi

# ---- GOPATH tree ----
say "building in $BUILD"
rm -rf "$BUILD/gopath" "$BUILD/bin" "$BUILD/inputs.sha256"
GOPATH_DIR="$BUILD/gopath"
MACH="$GOPATH_DIR/src/github.com/RichardKnop/machinery/v2"
mkdir -p "$MACH" "$BUILD/bin"
cp -R "$SRC/." "$MACH/"
cp -R "$HERE/stubs/." "$GOPATH_DIR/src/"
# robfig/cron: Debian ships it at github.com/robfig/cron, Go Machinery imports .../cron/v3
mkdir -p "$GOPATH_DIR/src/github.com/robfig/cron/v3"
cp -R /usr/share/gocode/src/github.com/robfig/cron/. "$GOPATH_DIR/src/github.com/robfig/cron/v3/"

rm -f "$MACH/brokers/redis/goredis.go" "$MACH/backends/redis/goredis.go"
CFG="$MACH/config/config.go"
for imp in '"cloud.google.com/go/pubsub"' \
           'dynamodbiface "github.com/RichardKnop/machinery/v2/backends/iface/dynamodb"' \
           '"github.com/RichardKnop/machinery/v2/brokers/iface/sqs"' \
           '"go.mongodb.org/mongo-driver/mongo"'; do
  grep -qF "$imp" "$CFG" || die "config/config.go no longer imports $imp: update build.sh"
  grep -vF "$imp" "$CFG" > "$CFG.new" && mv "$CFG.new" "$CFG"
done
n_before=$(grep -cE '^\s*Client\s+(dynamodbiface\.API|sqs\.API|\*pubsub\.Client|\*mongo\.Client)$' "$CFG" || true)
[ "$n_before" = 4 ] || die "config/config.go: expected 4 client fields, found $n_before: update build.sh"
sed -i -E 's/^(\s*Client\s+)(dynamodbiface\.API|sqs\.API|\*pubsub\.Client|\*mongo\.Client)$/\1interface{}/' "$CFG"
if grep -nE 'dynamodbiface|sqs\.API|pubsub\.|mongo\.' "$CFG"; then die "config/config.go still refers to a cloud client"; fi

# ---- our programs ----
mkdir -p "$GOPATH_DIR/src/machinery-interop"
cp -R "$HERE/cmd" "$GOPATH_DIR/src/machinery-interop/"
export GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$GOPATH_DIR:/usr/share/gocode" GOCACHE="$BUILD/gocache"
(cd "$GOPATH_DIR/src/machinery-interop" \
  && go build -o "$BUILD/bin/goworker" ./cmd/goworker \
  && go build -o "$BUILD/bin/goproducer" ./cmd/goproducer \
  && go build -o "$BUILD/bin/gobench" ./cmd/gobench) >&2 || die "go build failed"
echo "$HASH" > "$BUILD/inputs.sha256"
say "built $BUILD/bin/goworker $BUILD/bin/goproducer $BUILD/bin/gobench"
echo "$BUILD"
