#!/usr/bin/env bash
# Compiles every ebpf/*.bpf.c into the committed ebpf/*.bpf.o that the agent
# embeds with include_bytes!, so `cargo build` needs no clang.
#
#   ebpf/build.sh           rebuild the committed objects
#   ebpf/build.sh --check   rebuild into a temp dir, fail if they differ (CI)
#
# Needs clang-19 and llvm-strip-19 (Debian: apt-get install clang-19 llvm-19
# libbpf-dev). The output is reproducible: DWARF is stripped (-g is still
# needed, it is what makes clang emit the .BTF/.BTF.ext sections CO-RE
# relocates with, and those are kept), and source paths are mapped to a
# fixed prefix so the checkout location does not leak into the BTF strings.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
CLANG="${CLANG:-clang-19}"
STRIP="${LLVM_STRIP:-llvm-strip-19}"

for tool in "$CLANG" "$STRIP"; do
	command -v "$tool" >/dev/null || { echo "ebpf/build.sh: $tool not found (apt-get install clang-19 llvm-19 libbpf-dev)" >&2; exit 2; }
done
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "ebpf/build.sh: libbpf headers not found (apt-get install libbpf-dev)" >&2; exit 2; }

check=0
[ "${1:-}" = "--check" ] && check=1

out="$here"
if [ $check = 1 ]; then
	out="$(mktemp -d)"
	trap 'rm -rf "$out"' EXIT
fi

for src in "$here"/*.bpf.c; do
	name="$(basename "$src" .c)"
	(cd "$here" && "$CLANG" -target bpf -g -O2 -Wall -Werror \
		-D__TARGET_ARCH_x86 \
		-fdebug-prefix-map="$here"=ebpf -ffile-prefix-map="$here"=ebpf \
		-fno-ident \
		-I "$here" -I /usr/include \
		-c "$name.c" -o "$out/$name.o")
	"$STRIP" -g "$out/$name.o"
done

if [ $check = 1 ]; then
	status=0
	for obj in "$out"/*.bpf.o; do
		name="$(basename "$obj")"
		if ! cmp -s "$obj" "$here/$name"; then
			echo "ebpf/build.sh --check: $name differs from a fresh build of ${name%.o}.c; run ebpf/build.sh and commit" >&2
			status=1
		fi
	done
	for obj in "$here"/*.bpf.o; do
		[ -f "$out/$(basename "$obj")" ] || { echo "ebpf/build.sh --check: $(basename "$obj") has no source" >&2; status=1; }
	done
	[ $status = 0 ] && echo "ebpf/build.sh --check: objects match their sources"
	exit $status
fi
