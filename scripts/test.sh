#!/usr/bin/env bash
# Installs what is missing, then builds and runs the whole test suite:
#   1. gcc Release build (what scripts/run.sh builds), every test;   2. clang build, every test (the slow end-to-end ones included);
#   3. clang with AddressSanitizer + UndefinedBehaviorSanitizer, every test (smaller randomized
#      runs) plus a 75 s soak under LeakSanitizer (soak_short);
#   4. ThreadSanitizer build, the concurrency tests (label "concurrency": the unit tests named
#      *concurrency*; the rest of the suite has no threads of its own to race);
#   5. libFuzzer targets, a bounded time each (VD_FUZZ_SECONDS, default 30).
# Nothing passes by running nothing: ctest fails when a selection holds no test, every
# tests/fuzz/fuzz_*.c must have built and run, and VD_TEST_NO_SKIP=1 turns a test's skip into a
# failure (tests/skip.h). Exit status 0 means everything passed. VD_TEST_QUICK=1 stops after step 1.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh" --test || exit 1
jobs=$(nproc)
failed=()
export VD_TEST_NO_SKIP=1

# The wall time of each step and of the whole run is printed at the end, to help keep the run
# well inside CI's time limit.
times=()
step_name=""
step_end() {
    [ -n "$step_name" ] && times+=("$(printf '%5d s  %s' $((SECONDS - step_t0)) "$step_name")")
    step_name=""
}
step() { step_end; step_name="$*"; step_t0=$SECONDS; echo; echo "==== $* ===="; }
build() { # dir, cmake args...
    local dir=$1; shift
    cmake -S "$root" -B "$root/build/$dir" -G Ninja "$@" >/dev/null && cmake --build "$root/build/$dir" -j "$jobs"
}
run_ctest() { # dir, ctest args...
    local dir=$1; shift
    (cd "$root/build/$dir" && ctest --output-on-failure --no-tests=error -j "$jobs" "$@")
}

step "gcc build and tests"
if build gcc -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Release; then
    run_ctest gcc || failed+=("gcc tests")
else
    failed+=("gcc build")
fi
if [ "${VD_TEST_QUICK:-0}" != 1 ]; then
    step "clang build and tests"
    if build clang -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo; then
        run_ctest clang || failed+=("clang tests")
    else
        failed+=("clang build")
    fi

    step "AddressSanitizer + UndefinedBehaviorSanitizer"
    if build asan -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DVD_SANITIZE=address,undefined; then
        VD_TEST_SCALE=small ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 run_ctest asan || failed+=("sanitizer tests")
    else
        failed+=("sanitizer build")
    fi

    step "ThreadSanitizer (concurrency tests)"
    if build tsan -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVD_TSAN=ON; then
        VD_TEST_SCALE=small TSAN_OPTIONS=halt_on_error=1 run_ctest tsan -L concurrency || failed+=("tsan tests")
    else
        failed+=("tsan build")
    fi

    step "fuzzing (bounded)"
    if build fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVD_FUZZ=ON; then
        # the targets expected are the drivers in the source tree, so a new one is expected
        # as soon as it exists, and one that did not build or did not run fails the step
        for src in "$root"/tests/fuzz/fuzz_*.c; do
            name=$(basename "$src" .c)
            f="$root/build/fuzz/tests/fuzz/$name"
            if [ ! -x "$f" ]; then
                echo "-- $name: not built"
                failed+=("fuzz $name (not built)")
                continue
            fi
            corpus="$root/tests/fuzz/corpus/${name#fuzz_}"
            mkdir -p "$root/build/fuzz/work/$name"
            echo "-- $name"
            "$f" -max_total_time="${VD_FUZZ_SECONDS:-30}" -max_len=65536 -print_final_stats=1 \
                "$root/build/fuzz/work/$name" $( [ -d "$corpus" ] && echo "$corpus" ) \
                >"$root/build/fuzz/work/$name.log" 2>&1
            rc=$?
            tail -4 "$root/build/fuzz/work/$name.log"
            runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$root/build/fuzz/work/$name.log")
            if [ $rc -ne 0 ]; then
                failed+=("fuzz $name"); tail -60 "$root/build/fuzz/work/$name.log"
            elif [ "${runs:-0}" -eq 0 ]; then
                echo "-- $name: ran no input"
                failed+=("fuzz $name (no runs)")
            fi
        done
    else
        failed+=("fuzz build")
    fi
fi

step_end
echo
printf '%s\n' "${times[@]}"
printf '%5d s  in all\n' "$SECONDS"
if [ ${#failed[@]} -eq 0 ]; then
    echo "test.sh: all steps passed"
    exit 0
fi
echo "test.sh: FAILED: ${failed[*]}"
exit 1
