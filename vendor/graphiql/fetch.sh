#!/bin/sh
# Re-creates the vendored GraphiQL files from the npm registry and prints their sha256, so the
# table in README.md can be checked (or updated after a version bump). Needs npm, tar, sha256sum.
#
#   vendor/graphiql/fetch.sh            # from the repository root
#
# Every tarball is checked against the integrity hash pinned below (the `dist.integrity` that
# `npm view <package>@<version> dist.integrity` prints) before anything is extracted.
set -eu

dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() { # package version integrity
    (cd "$work" && npm pack --silent "$1@$2" >/dev/null)
    tgz="$work/$1-$2.tgz"
    got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 | tr -d '\n')"
    if [ "$got" != "$3" ]; then
        echo "integrity mismatch for $1@$2: $got" >&2
        exit 1
    fi
    mkdir -p "$work/$1"
    tar -xzf "$tgz" -C "$work/$1"
}

fetch graphiql 3.9.0 'sha512-rJYFlHdBbug9+YbFSwRVvgfPjCayC7wHecZkx/qB4XLuQPFQZw/yB9pmHFtOJV6RiNBBHro3u1GdocKa3YcGRA=='
fetch react 18.3.1 'sha512-wS+hAgJShR0KhEvPJArfuPVN1+Hz1t0Y6n5jLrGQbkb4urgPE/0Rve+1kMB1v/oWgHgm4WIcV+i7F2pTVj+2iQ=='
fetch react-dom 18.3.1 'sha512-5m4nQKp+rZRb09LNH59GM4BxTh9251/ylbKIbpe7TpGxfJ+9kv6BLkLBXIjjspbgbnIBNqlI23tRnTWT0snUIw=='
# Bundled inside graphiql.min.js (markdown-it's HTML entity tables) under BSD-2-Clause, whose
# notice has to travel with the binary; only its licence is taken.
fetch entities 4.5.0 'sha512-V0hjH4dGPh9Ao5p0MoRY6BVqtwCjhz6vI5LT8AJ55H+4g9/4vbHx1I54fS0XuclLhDHArPQCiMjDxjaL8fPxhw=='

# The one change to upstream bytes: the bundle's last line points at a source map (4 MB) that is
# not shipped, which browsers' developer tools would request and report as missing.
sed '$ { /^\/\/# sourceMappingURL=/d; }' "$work/graphiql/package/graphiql.min.js" > "$dir/graphiql.min.js"
cp "$work/graphiql/package/graphiql.min.css" "$dir/graphiql.min.css"
cp "$work/graphiql/package/LICENSE" "$dir/LICENSE.graphiql"
cp "$work/react/package/umd/react.production.min.js" "$dir/react.production.min.js"
cp "$work/react-dom/package/umd/react-dom.production.min.js" "$dir/react-dom.production.min.js"
cp "$work/react/package/LICENSE" "$dir/LICENSE.react"
cp "$work/entities/package/LICENSE" "$dir/LICENSE.entities"

echo "upstream graphiql.min.js: $(sha256sum "$work/graphiql/package/graphiql.min.js" | cut -d' ' -f1)"
cd "$dir" && sha256sum graphiql.min.js graphiql.min.css react.production.min.js \
    react-dom.production.min.js LICENSE.graphiql LICENSE.react LICENSE.entities
