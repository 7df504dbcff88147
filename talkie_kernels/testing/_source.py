"""MSL source handling: what Metal refuses, and the rewrites C++ needs.

All matching happens on the text with comments and string literals blanked
out (same offsets, same newlines), so prose in comments never matches and
every rewrite keeps line numbers: compiler messages and barrier errors point
at the generated source MLX would show.
"""

from __future__ import annotations

import re


class MetalCompileError(ValueError):
    """The kernel source is not valid Metal (as far as the emulator can tell)."""


def strip_comments_and_strings(text: str, strings: bool = True) -> str:
    """Blank out comments (and string literals), keeping offsets and newlines."""

    def blank(m: re.Match) -> str:
        if not strings and m.group(0)[0] in "\"'":
            return m.group(0)
        return re.sub(r"[^\n]", " ", m.group(0))

    return re.sub(
        r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
        blank,
        text,
        flags=re.S,
    )


def numbered(text: str) -> str:
    lines = text.split("\n")
    width = len(str(len(lines)))
    return "\n".join(f"{i + 1:>{width}} | {line}" for i, line in enumerate(lines))


# ---------------------------------------------------------------------------
# What Metal refuses (a C++ compiler would accept it)

_FORBIDDEN = [
    (r"\bdouble\b", "`double`: Metal has no 64-bit floating point type"),
    (r"\bstd\s*::", "`std::`: Metal has no C++ standard library"),
    (r"\bnew\b", "`new`: Metal has no dynamic allocation"),
    (r"\bdelete\b(?!\s*;)", "`delete`: Metal has no dynamic allocation"),
    (r"\b(throw|try|catch)\b", "exceptions: Metal has no exception handling"),
    (r"\bvirtual\b", "`virtual`: Metal has no virtual functions"),
    (r"\b(typeid|dynamic_cast)\b", "RTTI: Metal has no run-time type information"),
    (r"\bthread_local\b", "`thread_local`: not a Metal keyword"),
    (r"\bgoto\b", "`goto`: not supported by Metal"),
    (r"\(\s*(?:\w+\s*::\s*)*\*\s*\w*\s*\)\s*\(",
     "a function pointer: Metal kernels cannot use function pointers"),
    (r"\b(printf|malloc|free|calloc|memcpy|memset)\s*\(",
     "a C library call: Metal has no C library"),
    (r"\bstatic\s+(?!constexpr\b|const\b|constant\b|inline\b|METAL_FUNC\b)"
     r"[\w:<>,\s]+?\b\w+\s*(?:=|;|\[)",
     "a mutable static variable: Metal has no static storage outside the constant address space"),
]
_FORBIDDEN = [(re.compile(p), reason) for p, reason in _FORBIDDEN]
# Checked with string literals kept: `#include "x.h"`.
_INCLUDE_RE = re.compile(r"#\s*include\s*[<\"](?!metal_)")


def check_metal_subset(kernel: str, part: str, generated: str) -> None:
    """Raise MetalCompileError when `part` (header or source) uses what Metal refuses."""
    if not part:
        return
    offset = generated.find(part)
    base = generated[:offset].count("\n") if offset >= 0 else 0
    code = strip_comments_and_strings(part)
    hits = [(p.search(code), reason) for p, reason in _FORBIDDEN]
    hits.append((_INCLUDE_RE.search(strip_comments_and_strings(part, strings=False)),
                 "#include of a non-Metal header"))
    for m, reason in hits:
        if m:
            line = base + code[: m.start()].count("\n") + 1
            raise MetalCompileError(
                f"[metal_kernel] `{kernel}` is not valid Metal: {reason} "
                f"(generated source line {line}).\n\nGenerated source:\n{numbered(generated)}"
            )


# ---------------------------------------------------------------------------
# Rewrites


def _substitute(pattern: re.Pattern, text: str, replace) -> str:
    """`pattern.sub(replace, text)`, matching on the comment-free text."""
    code = strip_comments_and_strings(text)
    pieces, last = [], 0
    for m in pattern.finditer(code):
        pieces.append(text[last:m.start()])
        pieces.append(replace(m))
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)


# Metal's half literals (1.0h, 2h, 1e-3h).
_HALF_LITERAL_RE = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)[hH]\b")


def rewrite_half_literals(text: str) -> str:
    """`1.5h` -> `half(1.5f)`."""

    def replace(m: re.Match) -> str:
        number = m.group(1)
        if not re.search(r"[.eE]", number):
            number += ".0"
        return f"half({number}f)"

    return _substitute(_HALF_LITERAL_RE, text, replace)


# A `threadgroup` variable declaration: a statement with no pointer,
# reference, call or block before its `;` (array bounds may hold anything).
_TG_DECL_RE = re.compile(r"\bthreadgroup\s+((?:[^;(){}*&\[\]]|\[[^\]]*\])*);")
# `threadgroup` left after the rewrite must qualify a pointer or reference.
_UNPARSED_TG_RE = re.compile(r"\bthreadgroup\s+[^;,)*&]*[;,)]")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "<[":
            depth += 1
        elif ch in ">]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def rewrite_threadgroup(kernel: str, text: str) -> str:
    """`threadgroup T a[N], b;` -> references into the worker's threadgroup arena.

    The runtime hands out one block per declaration and threadgroup, poisoned
    (all-ones bytes: NaN, -1) when the threadgroup first reaches it, and
    refuses more than Metal's 32 KiB. Anything else spelled `threadgroup` must
    qualify a pointer or a reference (the macro makes it plain memory).
    """
    counter = [0]

    def replace(m: re.Match) -> str:
        names, parts = [], []
        for k, part in enumerate(_split_top_level(m.group(1))):
            head = part.split("[", 1)[0].split("=", 1)[0]
            ids = list(re.finditer(r"[A-Za-z_]\w*", head))
            if not ids:
                return m.group(0)
            ident = ids[-1] if k == 0 else ids[0]
            names.append(ident.group(0))
            parts.append(part[: ident.start()] + f"tk_tg_t_{ident.group(0)}" + part[ident.end():])
        out = [f"typedef {','.join(parts)};"]
        for n in names:
            out.append(
                f"tk_tg_t_{n}& {n} = *reinterpret_cast<tk_tg_t_{n}*>(tk_rt_threadgroup_alloc("
                f"{counter[0]}, sizeof(tk_tg_t_{n}), alignof(tk_tg_t_{n})));"
            )
            counter[0] += 1
        return " ".join(out)

    body = _substitute(_TG_DECL_RE, text, replace)
    leftover = _UNPARSED_TG_RE.search(strip_comments_and_strings(body))
    if leftover:
        line = body[: leftover.start()].count("\n") + 1
        raise MetalCompileError(
            f"[metal_kernel] `{kernel}`: the emulator cannot parse the threadgroup declaration "
            f"on generated source line {line} (write it as `threadgroup T name[N];`).\n\n"
            f"Generated source:\n{numbered(text)}"
        )
    return body


# ---------------------------------------------------------------------------
# Call graph (GCC -fcallgraph-info of an -O0 compile): recursion and
# indirect calls, which Metal rejects.

_CI_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
_CI_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"(?: label: "([^"]*)")?')


def callgraph_problems(text: str) -> list[str]:
    labels = {title: label.replace("\\n", " at ") for title, label in _CI_NODE.findall(text)}
    edges: dict[str, list[str]] = {}
    problems = []
    for src, dst, where in _CI_EDGE.findall(text):
        if dst == "__indirect_call":
            if where.startswith("generated:"):
                problems.append(
                    f"an indirect call (function pointer) at {where}: Metal kernels cannot "
                    "call through function pointers"
                )
            continue
        edges.setdefault(src, []).append(dst)
    # Depth-first search; an edge back into the current path closes a cycle.
    state: dict[str, int] = {}  # 1: on the path, 2: finished
    for root in list(edges):
        if state.get(root):
            continue
        stack = [(root, iter(edges.get(root, ())))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                problems.append(
                    "recursion: " + " -> ".join(labels.get(n, n) for n in cycle)
                    + " (Metal does not support recursive calls)"
                )
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(edges.get(nxt, ()))))
                path.append(nxt)
    return problems
