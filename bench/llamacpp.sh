#!/bin/sh
# Builds llama.cpp's own quantizer, importance-matrix and perplexity/KL tools
# OUTSIDE the repository, so bench/gguf_kld.py can hold quantfs's GGUF views
# against llama.cpp's files of the same type on the same text (issue #24).
# Nothing here is committed or linked into quantfs. The source is the
# llama.cpp release that the npm package node-llama-cpp ships as a git
# bundle (tests/node's dependency: `npm ci` there), and only that: no
# other source is taken.
#
# Two ways, the same tools:
#  - default: the three tools' own sources (tools/quantize, tools/imatrix,
#    tools/perplexity of that release) compiled and linked against the
#    libllama / libllama-common / libggml that @node-llama-cpp/linux-x64
#    ships for the same release (its CPU backend picks the variant for this
#    processor at run time, as a GGML_NATIVE build targets it): about 3
#    minutes on 2 shared cores;
#  - --cmake: the whole of llama.cpp from source with cmake,
#    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF, only those three targets: more
#    than an hour on 2 shared cores.
#
# usage: bench/llamacpp.sh [--cmake] [DEST]   (DEST: /tmp/qf-llamacpp)
#   prints DEST/bin (llama-quantize, llama-imatrix, llama-perplexity) and
#   writes DEST/COMMIT (the llama.cpp commit the tools report).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cmake_build=false
if [ "${1:-}" = --cmake ]; then
    cmake_build=true
    shift
fi
dest=${1:-/tmp/qf-llamacpp}
nm=$here/../tests/node/node_modules
bundle=$nm/node-llama-cpp/llama/gitRelease.bundle
libs=$nm/@node-llama-cpp/linux-x64/bins/linux-x64
src=$dest/src
mkdir -p "$dest/bin"
if [ ! -f "$src/CMakeLists.txt" ]; then
    if [ ! -f "$bundle" ]; then
        echo "llamacpp.sh: no llama.cpp release: run 'npm ci' in" \
             "tests/node (node-llama-cpp ships it)" >&2
        exit 1
    fi
    git -c advice.detachedHead=false clone -q "$bundle" "$src"
fi
tools="llama-quantize llama-imatrix llama-perplexity"
if $cmake_build; then
    command -v cmake >/dev/null || {
        echo "llamacpp.sh: cmake is missing (apt-get install cmake)" >&2
        exit 1; }
    nice -n 19 cmake -S "$src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DBUILD_SHARED_LIBS=OFF >"$dest/cmake.log" 2>&1 || {
        tail -20 "$dest/cmake.log" >&2; exit 1; }
    # shellcheck disable=SC2086
    nice -n 19 cmake --build "$dest/build" -j "$(nproc)" --target $tools \
        >"$dest/build.log" 2>&1 || { tail -20 "$dest/build.log" >&2; exit 1; }
    for t in $tools; do
        cp "$dest/build/bin/$t" "$dest/bin/$t"
    done
else
    if [ ! -f "$libs/libllama-common.so" ]; then
        echo "llamacpp.sh: no $libs/libllama-common.so: run 'npm ci' in" \
             "tests/node, or use --cmake" >&2
        exit 1
    fi
    cp "$libs"/*.so "$dest/bin/"
    cc_tool() {		# OUT SOURCES...
        out=$1
        shift
        nice -n 19 g++ -O2 -std=c++17 -I"$src/include" \
            -I"$src/ggml/include" -I"$src/common" -I"$src/vendor" \
            -I"$src/tools/quantize" "$@" -o "$dest/bin/$out" -L"$dest/bin" \
            -l:libllama-common.so "-l:$(basename "$dest"/bin/libllama.v*.so)" \
            "-l:$(basename "$dest"/bin/libggml.v*.so)" -l:libggml-base.so \
            -Wl,-rpath,'$ORIGIN' -pthread >>"$dest/build.log" 2>&1 || {
            tail -20 "$dest/build.log" >&2; exit 1; }
    }
    : >"$dest/build.log"
    cc_tool llama-quantize "$src/tools/quantize/main.cpp" \
        "$src/tools/quantize/quantize.cpp"
    cc_tool llama-imatrix "$src/tools/imatrix/imatrix.cpp"
    cc_tool llama-perplexity "$src/tools/perplexity/main.cpp" \
        "$src/tools/perplexity/perplexity.cpp"
fi
"$dest/bin/llama-perplexity" --version 2>&1 |
    sed -n 's/.*commit \([0-9a-f]*\).*/\1/p' >"$dest/COMMIT"
echo "$dest/bin"
