#!/usr/bin/env bash
# Run a Python command as if on an AVX2-only CPU (AMD Zen 3: AVX2 + FMA, no AVX-512, no
# VNNI), even on a machine that has AVX-512: QEMU's user-mode emulator presents that CPU
# to the process (its CPUID, and an illegal-instruction fault for anything beyond it), so
# ONNX Runtime picks its AVX2 kernels, irkit's "native" target is an AVX2 one, and code
# built for x86-64-v4 dies with SIGILL exactly as it would there.
#
#   scripts/on_avx2.sh python -m pytest -q tests/plugins/test_llvm_int8.py
#   scripts/on_avx2.sh irkit targets
#
# Needs qemu-user (Debian: apt-get install qemu-user). Emulation is 10-50x slower than the
# host, so run test subsets, not the whole suite; subprocesses a test starts run natively
# (user-mode QEMU does not follow exec). CPU=Haswell (Intel, AVX2) works too.
set -euo pipefail
if ! command -v qemu-x86_64 >/dev/null; then
    echo "on_avx2.sh: qemu-x86_64 not found (apt-get install qemu-user)" >&2
    exit 2
fi
if [ "$#" -eq 0 ]; then
    echo "usage: scripts/on_avx2.sh python|SCRIPT [ARGS...]" >&2
    exit 2
fi
case "$1" in
    python|python3)
        # Shims (pyenv) are shell scripts: emulate the interpreter they resolve to.
        interpreter=$("$1" -c 'import sys; print(sys.executable)')
        shift
        set -- "$interpreter" "$@" ;;
    *)
        script=$(command -v "$1")
        case "$script" in  # a pyenv shim is a shell script: find what it runs
            */shims/*) script=$(pyenv which "$1") ;;
        esac
        shebang=$(head -n 1 "$script")
        if [ "${shebang:0:2}" = "#!" ]; then
            shift
            # shellcheck disable=SC2086  # the shebang's interpreter and its arguments
            set -- ${shebang:2} "$script" "$@"
        fi ;;
esac
exec qemu-x86_64 -cpu "${CPU:-EPYC-Milan}" "$@" 2> >(grep -v "TCG doesn't support" >&2)
