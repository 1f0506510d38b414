#!/usr/bin/env python3
"""Checks that the code keeps the dependency arrows ARCHITECTURE.md draws.

usage: check-layering.py SOURCE_ROOT BUILD_DIR

Four checks, each failing with the file and the arrow it breaks:
  1. includes: every `#include "folder/..."` in a room's sources names a room that room may use
     (ROOMS below, transitively), or one of the headers a room may include for its types only;
     test-only headers (TEST_ONLY) are included by tests/ and their implementation alone;
  2. symbols: every xd_ function or variable that a library's objects use (nm) is defined in
     the library itself or in a room it links (types-only arrows do not count), and none is a
     test-only hook (TEST_ONLY_SYMBOLS);
  3. no cycle between object files anywhere in the build: file A calling file B calling A is
     one module cut in two;
  4. the forward pass (base, model, cpu, the engine front) calls no PCRE2, utf8proc or zstd.
"""
import os
import re
import subprocess
import sys

# room -> the rooms it links and includes freely (direct arrows; what they use is allowed too).
ROOMS = {
    "engine/base": [],
    "engine/model": ["engine/base"],
    "engine/text": ["engine/base"],
    "engine/experts": ["engine/model"],
    "engine/cpu": ["engine/model"],
    "engine": ["engine/cpu", "engine/model"],
    "scheduler": ["engine", "engine/text"],
    # config turns settings into the options of the rooms it configures (xd_engine_opts,
    # xd_sched_opts), so serve and the benchmarks share one copy
    "config": ["scheduler", "engine", "engine/experts", "engine/text"],
    "gpu": ["engine", "engine/experts"],
    # not gpu: expertd dlopens the CUDA backend (expertd-cuda.so), it never links it
    "daemon": ["config", "scheduler", "engine/experts"],
}
# Arrows for types only: the headers a room may include without linking their room.
TYPES_ONLY = {
    # a backend implements the front's interface: the ops table, options and counters
    "engine/cpu": {"engine/backend.h", "engine/engine.h"},
    # the engine's options name the expert cache's eviction policy and counters
    "engine": {"engine/experts/expert_cache.h"},
}
# Test-only headers: hooks that make a library misbehave on purpose (negative controls). Only
# tests/ and the file that implements the hook may include them, so no serving code can reach it.
TEST_ONLY = {
    "gpu/expert_pool_test.h": "gpu/expert_pool.cu",
}
# ... and the functions they declare, which no library may call.
TEST_ONLY_SYMBOLS = {"xd_expert_pool_test_skip_wait"}
# Leaves: they may use every room and nothing uses them.
LEAVES = ["tests", "bench", "tools", "clients"]
# The static library each room builds (file name in the build tree).
LIBS = {
    "libxd_base.a": "engine/base",
    "libxd_model.a": "engine/model",
    "libxd_text.a": "engine/text",
    "libxd_experts.a": "engine/experts",
    "libxd_cpu.a": "engine/cpu",
    "libxd_engine.a": "engine",
    "libxd_scheduler.a": "scheduler",
    "libxd_config.a": "config",
    "libxd_gpu.a": "gpu",
    "libxd_api.a": "daemon",
    "libxd_daemon.a": "daemon",
}
FORWARD_PASS = ["engine/base", "engine/model", "engine/cpu", "engine"]
FORWARD_PASS_FORBIDDEN = re.compile(r"^(pcre2_|utf8proc_|ZSTD_)")
SOURCE_EXT = (".c", ".h", ".cu")


def closure():
    """room -> every room it may use (itself included)."""
    allowed = {}

    def visit(room, seen):
        if room in seen:
            sys.exit(f"check-layering: the table has a cycle through {room}")
        out = {room}
        for dep in ROOMS[room]:
            out |= visit(dep, seen | {room})
        return out

    for room in ROOMS:
        allowed[room] = visit(room, set())
    return allowed


def room_of(path):
    """The room a repository path (a source file or an included header) belongs to."""
    folder = os.path.dirname(path)
    while folder:
        if folder in ROOMS or folder in LEAVES:
            return folder
        folder = os.path.dirname(folder)
    return None


def check_includes(root, allowed):
    errors = []
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
    for top in list(ROOMS) + LEAVES:
        base = os.path.join(root, top)
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, root)
            # a sub-room is checked as itself
            dirnames[:] = [d for d in dirnames if os.path.join(rel_dir, d) not in ROOMS]
            for name in filenames:
                if not name.endswith(SOURCE_EXT):
                    continue
                path = os.path.join(rel_dir, name)
                room = room_of(path)
                text = open(os.path.join(root, path), encoding="utf-8").read()
                for target in include.findall(text):
                    if target == "xd_build_config.h":
                        continue
                    if not os.path.exists(os.path.join(root, target)):
                        errors.append(f"{path}: #include \"{target}\" is not a path from the "
                                      "repository root")
                        continue
                    if target in TEST_ONLY and room != "tests" and path != TEST_ONLY[target]:
                        errors.append(f"{path}: includes {target}, a test-only hook: only tests/ "
                                      f"and {TEST_ONLY[target]} may")
                        continue
                    target_room = room_of(target)
                    if room in LEAVES or target_room == room:
                        continue
                    if target_room in LEAVES:
                        errors.append(f"{path}: includes {target}, but {target_room}/ is a leaf "
                                      "that nothing may use")
                    elif target_room not in allowed[room] and \
                            target not in TYPES_ONLY.get(room, ()):
                        errors.append(f"{path}: includes {target}: {room} may not use "
                                      f"{target_room} (ARCHITECTURE.md)")
    return errors


def nm(path, *flags):
    out = subprocess.run(["nm", *flags, path], capture_output=True, text=True, check=True)
    return out.stdout


def archive_members(archive):
    """{member object: (defined symbols, undefined symbols)} of a static library."""
    members = {}
    current = None
    for line in nm(archive).splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
            members[current] = (set(), set())
            continue
        parts = line.split()
        if current is None or not parts:
            continue
        if len(parts) == 2 and parts[0] == "U":
            members[current][1].add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBR":
            members[current][0].add(parts[2])
    return members


def check_symbols(build, allowed):
    errors = []
    libs = {}
    for dirpath, _, filenames in os.walk(build):
        for name in filenames:
            if name in LIBS:
                libs[os.path.join(dirpath, name)] = LIBS[name]
    missing = sorted(set(LIBS) - {os.path.basename(p) for p in libs})
    # the CUDA library exists only where nvcc was found
    missing = [m for m in missing if m != "libxd_gpu.a"]
    if missing:
        errors.append(f"{build}: libraries not found: {', '.join(missing)} (not built yet?)")
    owner = {}   # symbol -> (room, object)
    uses = []    # (room, object, symbol)
    for archive, room in sorted(libs.items()):
        for member, (defined, undefined) in archive_members(archive).items():
            obj = f"{os.path.basename(archive)}({os.path.basename(member)})"
            for sym in defined:
                owner.setdefault(sym, (room, obj))
            for sym in undefined:
                uses.append((room, obj, sym))
    edges = {}
    for room, obj, sym in uses:
        if room in FORWARD_PASS and FORWARD_PASS_FORBIDDEN.match(sym):
            errors.append(f"{obj}: the forward pass ({room}) calls {sym}")
        if sym in TEST_ONLY_SYMBOLS:
            errors.append(f"{obj}: calls {sym}, a test-only hook (only tests/ may)")
        if sym not in owner:
            continue
        target_room, target_obj = owner[sym]
        if target_obj != obj:
            edges.setdefault(obj, set()).add(target_obj)
        if sym.startswith("xd_") and target_room not in allowed[room]:
            errors.append(f"{obj}: uses {sym} from {target_obj}, but {room} does not link "
                          f"{target_room} (ARCHITECTURE.md)")
    errors += find_cycles(edges)
    return errors


def find_cycles(edges):
    """Object files that call each other, directly or round a loop (Tarjan's SCCs)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append("files that call each other (a circle): " + " <-> ".join(sorted(comp)))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    root, build = sys.argv[1], sys.argv[2]
    allowed = closure()
    errors = check_includes(root, allowed) + check_symbols(build, allowed)
    for e in errors:
        print(e)
    if errors:
        print(f"check-layering: {len(errors)} arrow(s) broken")
        return 1
    print(f"check-layering: {len(ROOMS)} rooms, includes, symbols and file cycles as drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
