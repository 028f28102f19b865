"""Writes ipsecoffload/datapath/structs.pxi from the struct declarations of
ipsecoffload/_fastpath.pxd: the sizes and field offsets the layout test compares with the numpy
dtypes of datapath/layout.py. Run from the repository root after changing a struct:

    python tools/gen_structs.py          # rewrite structs.pxi
    python tools/gen_structs.py --check  # exit 1 if structs.pxi is stale (tests/test_kernels.py)
"""
import re
import sys


def generate(pxd_text: str) -> str:
    pxd = pxd_text.splitlines()
    structs: dict = {}
    cur = None
    for line in pxd:
        m = re.match(r"ctypedef struct (\w+):", line)
        if m:
            cur = m.group(1)
            structs[cur] = []
            continue
        if cur:
            if line.startswith("    ") and line.strip() and not line.strip().startswith("#"):
                decl = line.split("#")[0].strip()
                name = re.sub(r"\[.*\]", "", decl.split()[-1])
                structs[cur].append(name)
            elif line.strip() == "" or not line.startswith(" "):
                if structs[cur]:
                    cur = None
    names = list(structs)
    out = ["# Sizes and field offsets of the C structs, for the layout test against the numpy dtypes",
           "# of datapath/layout.py. Included by _fastpath.pyx. Written by tools/gen_structs.py from",
           "# the .pxd: edit the structs there, then run it.", "",
           "STRUCT_SIZES = {" + ", ".join(f'"{n}": sizeof({n})' for n in names) + "}", "", "",
           "def struct_offsets():", '    """Field offsets of every C struct."""']
    for n in names:
        out.append(f"    cdef {n} v_{n}")
    out.append("    return {")
    for n in names:
        fields = ", ".join(f'"{f}": <char*>&v_{n}.{f} - <char*>&v_{n}' for f in structs[n])
        out.append(f'        "{n}": {{{fields}}},')
    out.append("    }")
    return "\n".join(out) + "\n"


def main(argv: list) -> int:
    text = generate(open("ipsecoffload/_fastpath.pxd").read())
    path = "ipsecoffload/datapath/structs.pxi"
    if "--check" in argv:
        with open(path) as f:
            if f.read() != text:
                print(f"{path} is stale: run python tools/gen_structs.py", file=sys.stderr)
                return 1
        return 0
    with open(path, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
