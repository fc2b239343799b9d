#!/usr/bin/env python3
"""Writes a man page from a built program, so that no page repeats --help by
hand: gpumatch(1) from the command table (`gpumatch __commands`), the
others from their --help text.

    gen-man.py gpumatch PROGRAM OUT
    gen-man.py help NAME SECTION SUMMARY PROGRAM OUT
"""
import json
import subprocess
import sys


def esc(s):
    s = s.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + l if l[:1] in (".", "'") else l) for l in s.split("\n"))


def head(name, section, version, summary):
    return ('.TH %s %s "" "gpumatch %s" "gpumatch"\n.SH NAME\n%s \\- %s\n'
            % (name.upper(), section, version.split()[0], esc(name), esc(summary)))


def flags(out, fl):
    for f in fl:
        arg = (" \\fI%s\\fR" % esc(f["arg"])) if f.get("arg") else ""
        out.append(".TP\n.B \\-\\-%s\\fR%s\n%s%s" % (esc(f["name"]), arg, esc(f["help"]),
                                                  " (repeatable)" if f["multi"] else ""))


def gpumatch_page(prog):
    t = json.loads(subprocess.run([prog, "__commands"], check=True, capture_output=True,
                                  text=True).stdout)
    out = [head("gpumatch", "1", t["version"],
                "submit and watch GPU jobs, run and manage nodes, administer gpumatchd"),
           ".SH SYNOPSIS\n.B gpumatch\n.I COMMAND\n[\\fIflags\\fR] [\\fIARGS\\fR]",
           ".SH DESCRIPTION",
           "The command of tenants, node operators and admins of a gpumatch network. "
           "It talks to gpumatchd over the Connect protocol; \\fB\\-o json\\fR prints "
           "what the server answered as proto3 JSON. "
           "\\fBgpumatch \\-\\-version\\fR prints the version.",
           ".SH COMMANDS"]
    for c in t["commands"]:
        syn = c["words"] + (" " + c["args"] if c["args"] else "") + \
            (" [-- COMMAND ARGS...]" if c["rest"] else "")
        out.append('.SS "gpumatch %s"\n%s' % (esc(syn), esc(c["summary"])))
        flags(out, c["flags"])
    out.append(".SH GLOBAL FLAGS")
    flags(out, t["global"])
    out.append(".SH EXIT STATUS\n"
               ".TP\n0\nsuccess\n.TP\n1\nthe server answered with an error\n"
               ".TP\n2\nbad flags, arguments or input files\n"
               ".TP\n3\ngpumatchd could not be reached\n"
               ".TP\n4\n\\fBwatch\\fR, \\fBsubmit \\-\\-watch\\fR: the job failed\n"
               ".TP\n5\n\\fBwatch\\fR, \\fBsubmit \\-\\-watch\\fR: the job was cancelled "
               "or preempted")
    out.append(".SH ENVIRONMENT\n.TP\n.B GPUMATCH_URL\ngpumatchd's address\n"
               ".TP\n.B GPUMATCH_TOKEN\nthe bearer token\n"
               ".TP\n.B GPUMATCH_CONFIG\nthe config file")
    out.append(".SH FILES\n.TP\n.I ~/.config/gpumatch/config\n"
               "url and token saved by \\fBgpumatch login\\fR (mode 0600)")
    out.append(".SH SEE ALSO\n\\fBgpumatchd\\fR(8), \\fBgpu\\-probe\\fR(1)")
    return "\n".join(out) + "\n"


def help_page(name, section, summary, prog):
    text = subprocess.run([prog, "--help"], check=True, capture_output=True, text=True).stdout
    version = subprocess.run([prog, "--version"], check=True, capture_output=True,
                             text=True).stdout.split(None, 1)[1].strip()
    others = [p for p in ("gpumatch(1)", "gpumatchd(8)", "gpu-probe(1)", "gpumatch-sim(1)")
              if not p.startswith(name + "(")]
    return (head(name, section, version, summary)
            + ".SH DESCRIPTION\nWhat \\fB%s \\-\\-help\\fR prints:\n.PP\n.nf\n%s\n.fi\n"
            % (esc(name), esc(text.rstrip("\n")))
            + ".SH SEE ALSO\n"
            + ", ".join("\\fB%s\\fR(%s)" % (esc(p[:-3]), p[-2]) for p in others) + "\n")


def main(argv):
    if argv[1] == "gpumatch":
        page = gpumatch_page(argv[2])
        out = argv[3]
    else:
        page = help_page(argv[2], argv[3], argv[4], argv[5])
        out = argv[6]
    with open(out, "w") as f:
        f.write(page)


if __name__ == "__main__":
    main(sys.argv)
