"""Per-kernel instruction counts from `cuobjdump -sass` (stdin): is each kernel on the path it was
written for? HMMA = tensor cores (mma.sync); LDSM = ldmatrix; LDGSTS = cp.async; LDG.E.128 =
16-byte global loads; LDL/STL = local memory (register spills or run-time-indexed register arrays:
slow, and a sign that a loop was not unrolled as meant).

    cuobjdump -sass $(python -c "import fastattn._cuda as m; print(m.__file__)") | python bench/sass_summary.py
"""

import re
import sys


def count(block: str, op: str) -> int:
    return len(re.findall(r"\b" + re.escape(op) + r"\b", block))


def main() -> None:
    text = sys.stdin.read()
    arch = "?"
    for block in re.split(r"\n(?=\s*(?:Function :|arch = ))", text):
        m = re.match(r"\s*arch = (\S+)", block)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", block)
        if not m:
            continue
        fields = [("HMMA", count(block, "HMMA")), ("LDSM", count(block, "LDSM")),
                  ("LDGSTS", count(block, "LDGSTS")), ("LDG128", block.count("LDG.E.128")),
                  ("LDL", count(block, "LDL")), ("STL", count(block, "STL"))]
        print(f"{arch:8s} " + " ".join(f"{k}={v:<5d}" for k, v in fields) + f" {m.group(1)}")


if __name__ == "__main__":
    main()
