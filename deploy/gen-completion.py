#!/usr/bin/env python3
"""Writes the bash or zsh completion of gpumatch from its command table
(`gpumatch __commands`), so new commands and flags complete without edits.

    gen-completion.py bash|zsh PROGRAM OUT
"""
import json
import subprocess
import sys


def table(prog):
    t = json.loads(subprocess.run([prog, "__commands"], check=True, capture_output=True,
                                  text=True).stdout)
    glob = ["--" + f["name"] for f in t["global"]]
    cmds = {}
    for c in t["commands"]:
        cmds[c["words"]] = ["--" + f["name"] for f in c["flags"]] + glob
    return cmds, glob


def children(cmds, prefix):
    """The next words after prefix ("" = first words)."""
    n = len(prefix.split()) if prefix else 0
    out = []
    for w in cmds:
        parts = w.split()
        if parts[:n] == (prefix.split() if prefix else []) and len(parts) > n:
            if parts[n] not in out:
                out.append(parts[n])
    return out


def bash(cmds, glob):
    prefixes = sorted({" ".join(w.split()[:i]) for w in cmds for i in range(len(w.split()))})
    lines = ["# bash completion for gpumatch, generated from its command table",
             "_gpumatch() {",
             "\tlocal cur=${COMP_WORDS[COMP_CWORD]} cpath= i w",
             "\tfor ((i = 1; i < COMP_CWORD; i++)); do",
             "\t\tw=${COMP_WORDS[i]}",
             "\t\t[[ $w == -* ]] && break",
             "\t\tcpath=${cpath:+$cpath }$w",
             "\tdone",
             "\tlocal words= flags=",
             '\tcase "$cpath" in']
    for p in prefixes:
        lines.append('\t"%s") words="%s" ;;' % (p, " ".join(children(cmds, p))))
    lines.append("\tesac")
    lines.append('\tcase "$cpath" in')
    for w, fl in sorted(cmds.items()):
        lines.append('\t"%s") flags="%s" ;;' % (w, " ".join(fl)))
    lines.append('\t*) flags="%s" ;;' % " ".join(glob + ["--version"]))
    lines.append("\tesac")
    lines += ['\tif [[ $cur == -* ]]; then',
              '\t\tCOMPREPLY=($(compgen -W "$flags" -- "$cur"))',
              '\telif [[ -n $words ]]; then',
              '\t\tCOMPREPLY=($(compgen -W "$words" -- "$cur"))',
              '\telse',
              '\t\tCOMPREPLY=($(compgen -f -- "$cur"))',
              '\tfi',
              "}",
              "complete -F _gpumatch gpumatch", ""]
    return "\n".join(lines)


def zsh(cmds, glob):
    prefixes = sorted({" ".join(w.split()[:i]) for w in cmds for i in range(len(w.split()))})
    lines = ["#compdef gpumatch",
             "# zsh completion for gpumatch, generated from its command table",
             "_gpumatch() {",
             "\tlocal cpath= i w",
             "\tfor ((i = 2; i < CURRENT; i++)); do",
             "\t\tw=${words[i]}",
             "\t\t[[ $w == -* ]] && break",
             "\t\tcpath=${cpath:+$cpath }$w",
             "\tdone",
             "\tlocal -a next fl",
             '\tcase "$cpath" in']
    for p in prefixes:
        lines.append('\t"%s") next=(%s) ;;' % (p, " ".join(children(cmds, p))))
    lines.append("\tesac")
    lines.append('\tcase "$cpath" in')
    for w, fl in sorted(cmds.items()):
        lines.append('\t"%s") fl=(%s) ;;' % (w, " ".join(fl)))
    lines.append('\t*) fl=(%s) ;;' % " ".join(glob + ["--version"]))
    lines.append("\tesac")
    lines += ['\tif [[ $PREFIX == -* ]]; then',
              "\t\tcompadd -- $fl",
              "\telif (( ${#next} )); then",
              "\t\tcompadd -- $next",
              "\telse",
              "\t\t_files",
              "\tfi",
              "}",
              '_gpumatch "$@"', ""]
    return "\n".join(lines)


def main(argv):
    cmds, glob = table(argv[2])
    text = bash(cmds, glob) if argv[1] == "bash" else zsh(cmds, glob)
    with open(argv[3], "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv)
