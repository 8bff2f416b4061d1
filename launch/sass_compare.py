#!/usr/bin/env python3
"""Proves that a source move left the CUDA kernels' machine code unchanged.

    launch/sass_compare.py BEFORE_DIR AFTER_DIR [--rename OLD=NEW]...

Each directory holds the dumps launch/sass_dump.sh writes: <unit>.sass (cuobjdump -sass) and
<unit>.res (cuobjdump -res-usage), one pair per translation unit of kernels/cuda/. Kernels are
matched by name across all units of a directory, since a move may carry a kernel into another
file. A name is demangled (c++filt) and its anonymous-namespace component dropped: that component
carries a hash of the file, and a kernel may leave an anonymous namespace in a move. Per kernel
the instruction text and encodings are compared without their addresses, and the resource line
(registers, stack, shared, local and constant memory) must match too.

--rename OLD=NEW replaces the text OLD by NEW in the demangled names of BEFORE (kernel names and
the names its code refers to): a kernel that gained a template parameter, e.g.
--rename 'wgmma_kernel<__half>=wgmma_kernel<__half, 128>', is then compared with its new
instantiation.

Prints one OK/DIFF/MISSING/NEW row per kernel and exits 1 on any difference, 0 when every kernel
before exists after with identical code.
"""
import glob
import os
import re
import subprocess
import sys

MANGLED = re.compile(r"_Z[A-Za-z0-9_]+")
ADDRESS = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s*")


def demangle(names):
    """Maps each mangled name to its demangled form, without any anonymous namespace."""
    names = sorted(set(names))
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return {m: d.replace("(anonymous namespace)::", "") for m, d in zip(names, out)}


def normalise(text, names):
    return MANGLED.sub(lambda m: names.get(m.group(0), m.group(0)), text)


def read_dumps(directory, renames=()):
    """Returns {kernel: (unit, code lines, resource line)} over the directory's dumps, with each
    (old, new) of `renames` applied to the demangled names."""
    raw = {}  # mangled name -> [unit, code lines, resource line]
    for path in sorted(glob.glob(os.path.join(directory, "*.sass"))):
        unit = os.path.basename(path)[:-len(".sass")]
        current = None
        with open(path) as f:
            for line in f:
                header = re.match(r"\s*Function : (\S+)", line)
                if header:
                    current = header.group(1)
                    if current in raw:
                        sys.exit(f"sass_compare: {current} twice in {directory}")
                    raw[current] = [unit, [], ""]
                elif current is not None and line.strip() and not line.lstrip().startswith("."):
                    raw[current][1].append(" ".join(ADDRESS.sub("", line).split()))
        res = path[:-len(".sass")] + ".res"
        if os.path.exists(res):
            with open(res) as f:
                lines = f.read().splitlines()
            for name_line, usage in zip(lines, lines[1:]):
                header = re.match(r"\s*Function (\S+):", name_line)
                if header and header.group(1) in raw:
                    raw[header.group(1)][2] = usage.strip()
    names = demangle(list(raw) + [m for _, code, _ in raw.values() for line in code
                                  for m in MANGLED.findall(line)])
    for mangled, name in names.items():
        for old, new in renames:
            name = name.replace(old, new)
        names[mangled] = name
    kernels = {}
    for mangled, (unit, code, usage) in raw.items():
        name = names[mangled]
        if name in kernels:
            sys.exit(f"sass_compare: two kernels named {name} in {directory}")
        kernels[name] = (unit, [normalise(line, names) for line in code], usage)
    return kernels


def main():
    args, renames = sys.argv[1:], []
    while len(args) > 2 and args[-2] == "--rename":
        old, sep, new = args[-1].partition("=")
        if not sep or not old:
            sys.exit(f"sass_compare: --rename {args[-1]}: give OLD=NEW")
        renames.insert(0, (old, new))
        args = args[:-2]
    if len(args) != 2:
        sys.exit(__doc__)
    before, after = read_dumps(args[0], renames), read_dumps(args[1])
    if not before:
        sys.exit(f"sass_compare: no kernels in {args[0]}")
    rows, failed = [], 0
    for name in sorted(set(before) | set(after)):
        if name not in after:
            status = "MISSING"
        elif name not in before:
            status = "NEW"
        elif before[name][1:] != after[name][1:]:
            status = "DIFF"
        else:
            status = "OK"
        failed += status != "OK"
        units = " -> ".join(dict.fromkeys(d[name][0] for d in (before, after) if name in d))
        rows.append(f"{status:8} {units:70} {name}")
    print("\n".join(rows))
    print(f"sass_compare: {len(rows) - failed} of {len(rows)} kernels identical, {failed} not")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
