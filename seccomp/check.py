#!/usr/bin/env python3
"""Validate rbuild's seccomp profile (seccomp/default.json) and print a summary.

Usage:
    python3 seccomp/check.py [PROFILE] [--tables FILE] [--verbose]
    python3 seccomp/check.py --regen-tables [--tables FILE]

Checks (any failure exits 1):
  * schema: known keys only, value types, actions, argument ops, arches, capability names;
  * every syscall name is a Linux syscall on at least one ABI the profile lists (and, for a
    rule restricted with "arches", on at least one of those ABIs);
  * no syscall is named twice in unconditional allow rules (or twice in one rule);
  * no syscall can get two different actions for any capability set (rules are meant to be
    order-independent, so that the compiler may stack one BPF filter per action);
  * policy assertions rbuild relies on (mount/unshare/setns/namespace clone denied with the
    default capability set, clone3 -> ENOSYS, AF_ALG/AF_VSOCK sockets denied, ...).

Syscall tables come from seccomp/syscalls.json (name -> number per ABI, generated from the
Linux UAPI headers by --regen-tables plus a hand-kept list of syscalls newer than those
headers). If this machine has newer x86 or asm-generic headers, names found there are added.

Python 3 standard library only.
"""

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

ABIS = ("x86_64", "x86", "x32", "aarch64", "arm", "riscv64")
X32_BIT = 0x40000000

# Actions a profile may use (besides {"errno": N}); they map 1:1 onto seccompiler's
# SeccompAction / the kernel's SECCOMP_RET_* values.
SIMPLE_ACTIONS = ("allow", "kill_process", "kill_thread", "trap", "log")
OPS = ("eq", "ne", "lt", "le", "gt", "ge", "masked_eq")

# Linux capabilities 0..40 (include/uapi/linux/capability.h).
CAPS = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID "
    "CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST "
    "CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO "
    "CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE "
    "CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE "
    "CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM "
    "CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()

# Docker's default capability set (what rbuild grants a RUN step unless told otherwise).
DOCKER_DEFAULT_CAPS = frozenset(
    "CAP_AUDIT_WRITE CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_MKNOD "
    "CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SETFCAP CAP_SETGID CAP_SETPCAP CAP_SETUID "
    "CAP_SYS_CHROOT".split()
)

TOP_KEYS = {
    "version": True, "default_action": True, "architectures": True, "rules": True,
    "name": False, "description": False, "upstream": False, "newer_syscalls_action": False,
    "unlisted_arch_action": False, "default_capabilities": False,
}
RULE_KEYS = {
    "id": True, "syscalls": True, "action": True, "comment": False, "args": False,
    "arches": False, "caps": False, "unless_caps": False, "min_kernel": False,
}
ARG_KEYS = {"index": True, "op": True, "value": True, "mask": False, "width": False}
NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
KVER_RE = re.compile(r"^(\d+)\.(\d+)$")

# Syscalls newer than the UAPI headers the table was generated from (Linux 6.1), with their
# numbers. Since Linux 5.1 new syscalls get the same number on every ABI (x32: | X32_BIT).
# Kept by hand: add new kernel syscalls here, then run --regen-tables.
POST_HEADER_SYSCALLS = {
    # name: (number, ABIs)                          kernel
    "cachestat": (451, ABIS),                       # 6.5
    "fchmodat2": (452, ABIS),                       # 6.6
    "map_shadow_stack": (453, tuple(a for a in ABIS if a != "x32")),  # 6.6 (not x32)
    "futex_wake": (454, ABIS),                      # 6.7
    "futex_wait": (455, ABIS),                      # 6.7
    "futex_requeue": (456, ABIS),                   # 6.7
    "statmount": (457, ABIS),                       # 6.8
    "listmount": (458, ABIS),                       # 6.8
    "lsm_get_self_attr": (459, ABIS),               # 6.8
    "lsm_set_self_attr": (460, ABIS),               # 6.8
    "lsm_list_modules": (461, ABIS),                # 6.8
    "mseal": (462, ABIS),                           # 6.10
    "setxattrat": (463, ABIS),                      # 6.13
    "getxattrat": (464, ABIS),                      # 6.13
    "listxattrat": (465, ABIS),                     # 6.13
    "removexattrat": (466, ABIS),                   # 6.13
    "open_tree_attr": (467, ABIS),                  # 6.15
    "file_getattr": (468, ABIS),                    # 6.17
    "file_setattr": (469, ABIS),                    # 6.17
    "uretprobe": (335, ("x86_64", "x32")),          # 6.11, x86-64 only
    "riscv_hwprobe": (258, ("riscv64",)),           # 6.4, riscv only
}


class Report:
    def __init__(self):
        self.errors = []
        self.warnings = []

    def error(self, msg):
        self.errors.append(msg)

    def warn(self, msg):
        self.warnings.append(msg)


# --------------------------------------------------------------------------------------------
# syscall tables
# --------------------------------------------------------------------------------------------

def load_tables(path, report):
    """Return ({abi: {name: nr}}, description of the sources)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        report.error(f"cannot read syscall table {path}: {e}")
        return {abi: {} for abi in ABIS}, "none"
    tables = {abi: dict(data.get("abis", {}).get(abi, {})) for abi in ABIS}
    for abi in ABIS:
        if not tables[abi]:
            report.error(f"syscall table {path} has no entries for {abi}")
    sources = [f"{os.path.relpath(path)} ({data.get('source', '?')})"]
    added = augment_from_headers(tables)
    if added:
        sources.append("local headers: +" + ", ".join(f"{n} {abi}" for abi, n in added.items()))
    return tables, "; ".join(sources)


def _parse_defines(path):
    out = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return out
    for m in re.finditer(r"^#define\s+__NR_(\w+)\s+(.+?)\s*$", text, re.M):
        expr = m.group(2).replace("__X32_SYSCALL_BIT", str(X32_BIT))
        if re.fullmatch(r"[0-9a-fA-FxX+ ()]+", expr):
            try:
                out[m.group(1)] = int(eval(expr, {"__builtins__": {}}))  # digits and + only
            except (SyntaxError, ValueError):
                pass
    return out


def augment_from_headers(tables):
    """Add names that this machine's (possibly newer) UAPI headers know and the table lacks."""
    inc = "/usr/include"
    x86 = os.path.join(inc, "x86_64-linux-gnu", "asm")
    if not os.path.isdir(x86):
        x86 = os.path.join(inc, "asm")
    sources = {
        "x86_64": [os.path.join(x86, "unistd_64.h")],
        "x86": [os.path.join(x86, "unistd_32.h")],
        "x32": [os.path.join(x86, "unistd_x32.h")],
    }
    generic = _parse_defines(os.path.join(inc, "asm-generic", "unistd.h"))
    # Only the unified tail (>= 451, newer than the table) is taken from asm-generic: older
    # entries there sit behind per-arch #ifdefs that this simple parser does not evaluate.
    generic_tail = {n: v for n, v in generic.items() if v >= 451 and n != "syscalls"}
    added = {}
    for abi in ABIS:
        found = {}
        for p in sources.get(abi, []):
            found.update(_parse_defines(p))
        if abi in ("aarch64", "riscv64"):
            found.update(generic_tail)
        new = {n: v for n, v in found.items() if n not in tables[abi] and n != "syscalls"}
        if new:
            tables[abi].update(new)
            added[abi] = len(new)
    return added


def regen_tables(path):
    """Regenerate syscalls.json from UAPI headers with cpp.

    Needs cpp and the headers: linux-libc-dev (x86_64, x86, x32), linux-libc-dev-arm64-cross,
    linux-libc-dev-armhf-cross and linux-libc-dev-riscv64-cross (Debian package names).
    """
    cfg = {
        "x86_64": ("/usr/include/x86_64-linux-gnu", ["-D__x86_64__", "-U__i386__", "-U__ILP32__"]),
        "x86": ("/usr/include/x86_64-linux-gnu", ["-U__x86_64__", "-D__i386__"]),
        "x32": ("/usr/include/x86_64-linux-gnu", ["-D__x86_64__", "-D__ILP32__"]),
        "aarch64": ("/usr/aarch64-linux-gnu/include", ["-D__aarch64__"]),
        "arm": ("/usr/arm-linux-gnueabihf/include", ["-D__arm__", "-D__ARM_EABI__"]),
        "riscv64": ("/usr/riscv64-linux-gnu/include",
                    ["-D__riscv", "-D__riscv_xlen=64", "-D__LP64__"]),
    }
    if not shutil.which("cpp"):
        sys.exit("--regen-tables needs cpp")
    not_syscalls = {"SYSCALL_BASE", "OABI_SYSCALL_BASE", "SYSCALL_MASK", "syscalls",
                    "arch_specific_syscall", "BASE"}
    abis = {}
    for abi, (inc, defs) in cfg.items():
        if not os.path.exists(os.path.join(inc, "asm", "unistd.h")):
            sys.exit(f"--regen-tables: no headers for {abi} under {inc}")
        cmd = ["cpp", "-dM", "-nostdinc", "-I", inc] + defs + ["-"]
        macros = subprocess.run(cmd, input="#include <asm/unistd.h>\n", capture_output=True,
                                text=True, check=True).stdout
        names = {}
        for m in re.finditer(r"^#define (__NR_|__ARM_NR_)(\w+) ", macros, re.M):
            name = m.group(2)
            if name in not_syscalls or name.startswith(("3264_", "x32_")):
                continue
            names[name] = m.group(1) + name
        src = "#include <asm/unistd.h>\n" + "".join(
            f"RBUILD_{n} = {macro} ;\n" for n, macro in sorted(names.items()))
        cmd = ["cpp", "-P", "-nostdinc", "-I", inc] + defs + ["-"]
        expanded = subprocess.run(cmd, input=src, capture_output=True, text=True,
                                  check=True).stdout
        table = {}
        for line in expanded.splitlines():
            m = re.match(r"RBUILD_(\w+) = (.*);$", line.strip())
            if m and re.fullmatch(r"[0-9a-fA-FxX+\-|()<> ]+", m.group(2)):
                table[m.group(1)] = int(eval(m.group(2), {"__builtins__": {}}))
        for name, (nr, in_abis) in POST_HEADER_SYSCALLS.items():
            if abi in in_abis and name not in table:
                table[name] = nr | (X32_BIT if abi == "x32" else 0)
        abis[abi] = dict(sorted(table.items(), key=lambda kv: (kv[1], kv[0])))
    version = "?"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "linux-libc-dev"],
                             capture_output=True, text=True).stdout.strip()
        version = out or version
    except OSError:
        pass
    data = {
        "source": f"Linux UAPI headers (linux-libc-dev {version} and the matching -cross "
                  f"packages) via check.py --regen-tables, plus POST_HEADER_SYSCALLS",
        "note": "name -> syscall number per ABI; x32 numbers include the 0x40000000 bit; "
                "ARM private syscalls are 0x0f0000 + n",
        "post_header_syscalls": sorted(POST_HEADER_SYSCALLS),
        "abis": abis,
    }
    with open(path, "w") as f:
        f.write("{\n")
        for key in ("source", "note", "post_header_syscalls"):
            f.write(f"  {json.dumps(key)}: {json.dumps(data[key])},\n")
        f.write('  "abis": {\n')
        for i, abi in enumerate(ABIS):
            items = [f"{json.dumps(n)}: {v}" for n, v in abis[abi].items()]
            lines, cur = [], ""
            for it in items:
                if cur and len(cur) + len(it) + 2 > 92:
                    lines.append(cur + ",")
                    cur = it
                else:
                    cur = f"{cur}, {it}" if cur else it
            lines.append(cur)
            body = "\n".join("      " + line for line in lines)
            f.write(f"    {json.dumps(abi)}: {{\n{body}\n    }}" + (",\n" if i < 5 else "\n"))
        f.write("  }\n}\n")
    print(f"wrote {path}: " + ", ".join(f"{a} {len(abis[a])}" for a in ABIS))


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_keys(obj, spec, where, report):
    if not isinstance(obj, dict):
        report.error(f"{where}: expected an object")
        return False
    for k in obj:
        if k not in spec:
            report.error(f"{where}: unknown key {k!r}")
    for k, required in spec.items():
        if required and k not in obj:
            report.error(f"{where}: missing key {k!r}")
    return True


def check_action(a, where, report):
    if isinstance(a, str):
        if a not in SIMPLE_ACTIONS:
            report.error(f"{where}: unknown action {a!r} (use {', '.join(SIMPLE_ACTIONS)} "
                         f"or {{\"errno\": N}})")
    elif isinstance(a, dict):
        if set(a) != {"errno"} or not is_int(a["errno"]) or not 0 <= a["errno"] <= 4095:
            report.error(f"{where}: errno action must be {{\"errno\": 0..4095}}, got {a!r}")
    else:
        report.error(f"{where}: action must be a string or {{\"errno\": N}}, got {a!r}")


def check_cap_list(v, where, report):
    if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
        report.error(f"{where}: expected a non-empty list of capability names")
        return
    for c in v:
        if c not in CAPS:
            report.error(f"{where}: unknown capability {c!r}")
    if len(set(v)) != len(v):
        report.error(f"{where}: duplicate capability")


def check_schema(p, report):
    if not check_keys(p, TOP_KEYS, "profile", report):
        return []
    if p.get("version") != 1:
        report.error(f"profile: version must be 1, got {p.get('version')!r}")
    for k in ("name", "description"):
        if k in p and not isinstance(p[k], str):
            report.error(f"profile: {k} must be a string")
    if "upstream" in p and not isinstance(p["upstream"], dict):
        report.error("profile: upstream must be an object")
    check_action(p.get("default_action"), "default_action", report)
    if p.get("default_action") == "allow":
        report.error("default_action: this schema is for allowlists; allow is not a default")
    for k in ("newer_syscalls_action", "unlisted_arch_action"):
        if k in p:
            check_action(p[k], k, report)
    if "default_capabilities" in p:
        check_cap_list(p["default_capabilities"], "default_capabilities", report)

    abis = []
    arches = p.get("architectures")
    if not isinstance(arches, list) or not arches:
        report.error("architectures: expected a non-empty list")
        arches = []
    for i, a in enumerate(arches):
        where = f"architectures[{i}]"
        if not check_keys(a, {"arch": True, "sub_arches": False}, where, report):
            continue
        subs = a.get("sub_arches", [])
        if not isinstance(subs, list):
            report.error(f"{where}: sub_arches must be a list")
            subs = []
        for abi in [a.get("arch")] + subs:
            if abi not in ABIS:
                report.error(f"{where}: unknown ABI {abi!r} (known: {', '.join(ABIS)})")
            elif abi in abis:
                report.error(f"{where}: ABI {abi!r} listed twice")
            else:
                abis.append(abi)

    rules = p.get("rules")
    if not isinstance(rules, list) or not rules:
        report.error("rules: expected a non-empty list")
        return abis
    ids = set()
    for i, r in enumerate(rules):
        where = f"rules[{i}]"
        if not check_keys(r, RULE_KEYS, where, report):
            continue
        rid = r.get("id")
        if not isinstance(rid, str) or not rid:
            report.error(f"{where}: id must be a non-empty string")
        elif rid in ids:
            report.error(f"{where}: duplicate id {rid!r}")
        else:
            ids.add(rid)
            where = f"rule {rid!r}"
        if "comment" in r and not isinstance(r["comment"], str):
            report.error(f"{where}: comment must be a string")
        names = r.get("syscalls")
        if not isinstance(names, list) or not names:
            report.error(f"{where}: syscalls must be a non-empty list")
        else:
            for n in names:
                if not isinstance(n, str) or not NAME_RE.match(n):
                    report.error(f"{where}: bad syscall name {n!r}")
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                report.error(f"{where}: syscalls named twice in one rule: {', '.join(dups)}")
        check_action(r.get("action"), f"{where}: action", report)
        if "args" in r:
            args = r["args"]
            if not isinstance(args, list) or not args:
                report.error(f"{where}: args must be a non-empty list (omit it for none)")
                args = []
            for j, c in enumerate(args):
                w = f"{where}: args[{j}]"
                if not check_keys(c, ARG_KEYS, w, report):
                    continue
                if not is_int(c.get("index")) or not 0 <= c["index"] <= 5:
                    report.error(f"{w}: index must be 0..5")
                width = c.get("width", 64)
                if width not in (32, 64):
                    report.error(f"{w}: width must be 32 or 64")
                    width = 64
                limit = 1 << width
                if c.get("op") not in OPS:
                    report.error(f"{w}: unknown op {c.get('op')!r} (known: {', '.join(OPS)})")
                if not is_int(c.get("value")) or not 0 <= c["value"] < limit:
                    report.error(f"{w}: value must be an integer in 0..2^{width}-1")
                if c.get("op") == "masked_eq":
                    if not is_int(c.get("mask")) or not 0 < c["mask"] < limit:
                        report.error(f"{w}: masked_eq needs a mask in 1..2^{width}-1")
                    elif is_int(c.get("value")) and c["value"] & ~c["mask"]:
                        report.error(f"{w}: value has bits outside mask (never matches)")
                elif "mask" in c:
                    report.error(f"{w}: mask is only valid with op masked_eq")
        if "arches" in r:
            ra = r["arches"]
            if not isinstance(ra, list) or not ra:
                report.error(f"{where}: arches must be a non-empty list")
            else:
                for abi in ra:
                    if abi not in abis:
                        report.error(f"{where}: arches names {abi!r}, which the profile's "
                                     f"architectures do not list")
        for k in ("caps", "unless_caps"):
            if k in r:
                check_cap_list(r[k], f"{where}: {k}", report)
        if set(r.get("caps") or []) & set(r.get("unless_caps") or []):
            report.error(f"{where}: a capability in both caps and unless_caps (never applies)")
        if "min_kernel" in r and not (isinstance(r["min_kernel"], str)
                                      and KVER_RE.match(r["min_kernel"])):
            report.error(f"{where}: min_kernel must look like \"4.8\"")
    return abis


# --------------------------------------------------------------------------------------------
# semantics
# --------------------------------------------------------------------------------------------

def rule_name(r):
    return r.get("id", "?")


def kernel_tuple(s):
    m = KVER_RE.match(s)
    return (int(m.group(1)), int(m.group(2)))


def rule_active(r, caps, abi, kernel=None):
    if any(c not in caps for c in r.get("caps", [])):
        return False
    if any(c in caps for c in r.get("unless_caps", [])):
        return False
    if "arches" in r and abi not in r["arches"]:
        return False
    if kernel is not None and "min_kernel" in r and kernel < kernel_tuple(r["min_kernel"]):
        return False
    return True


def arg_matches(c, args):
    width = c.get("width", 64)
    v = args[c["index"]] & ((1 << width) - 1)
    want = c["value"]
    op = c["op"]
    if op == "masked_eq":
        return v & c["mask"] == want
    return {"eq": v == want, "ne": v != want, "lt": v < want, "le": v <= want,
            "gt": v > want, "ge": v >= want}[op]


def decide(p, tables, caps, abi, name, args=(0, 0, 0, 0, 0, 0), kernel=(6, 18)):
    """The action the profile gives syscall `name` on `abi` (first matching rule wins)."""
    table = tables[abi]
    if name not in table:
        return "unknown"
    args = tuple(args) + (0,) * (6 - len(args))
    active = [r for r in p["rules"] if rule_active(r, caps, abi, kernel)]
    for r in active:
        if name in r["syscalls"] and all(arg_matches(c, args) for c in r.get("args", [])):
            return r["action"]
    top = newer_threshold(abi, [table[n] for r in active for n in r["syscalls"] if n in table])
    if "newer_syscalls_action" in p and top is not None and top < table[name] < PRIVATE[abi]:
        return p["newer_syscalls_action"]
    return p["default_action"]


# Start of each ABI's arch-private number range (ARM's __ARM_NR_BASE, x32's 512+ compat
# entries). newer_syscalls_action covers only numbers between the highest regular number the
# active rules name and this bound; private numbers never count towards the threshold.
PRIVATE = {"x86_64": 1 << 32, "x86": 1 << 32, "x32": X32_BIT + 512, "aarch64": 1 << 32,
           "arm": 0x0F0000, "riscv64": 1 << 32}


def newer_threshold(abi, numbers):
    regular = [n for n in numbers if n < PRIVATE[abi]]
    return max(regular) if regular else None


def effective(p, tables, caps, abi):
    """{name: [(action, rule)]} for the rules active for `caps` on `abi`."""
    out = {}
    for r in p["rules"]:
        if not rule_active(r, caps, abi):
            continue
        for n in r["syscalls"]:
            if n in tables[abi]:
                out.setdefault(n, []).append((r["action"], r))
    return out


def check_names(p, abis, tables, report):
    for r in p["rules"]:
        scope = r.get("arches", abis)
        for n in r["syscalls"]:
            if not any(n in tables[a] for a in abis):
                report.error(f"rule {rule_name(r)!r}: {n!r} is not a syscall on any listed ABI "
                             f"({', '.join(abis)})")
            elif not any(n in tables[a] for a in scope):
                report.error(f"rule {rule_name(r)!r}: {n!r} does not exist on the rule's "
                             f"arches ({', '.join(scope)})")


def is_unconditional(r):
    return not any(k in r for k in ("args", "caps", "unless_caps", "arches", "min_kernel"))


def check_duplicates(p, report):
    seen = {}
    for r in p["rules"]:
        if r["action"] == "allow" and is_unconditional(r):
            for n in r["syscalls"]:
                if n in seen:
                    report.error(f"{n!r} is in two unconditional allow rules: "
                                 f"{seen[n]!r} and {rule_name(r)!r}")
                seen.setdefault(n, rule_name(r))
    uncond = set(seen)
    for r in p["rules"]:
        if r["action"] == "allow" and not is_unconditional(r):
            redundant = sorted(uncond & set(r["syscalls"]))
            if redundant:
                report.warn(f"rule {rule_name(r)!r}: already allowed unconditionally: "
                            f"{', '.join(redundant)}")


def check_conflicts(p, abis, report):
    """No syscall may get two different actions from rules active at the same time."""
    by_name = {}
    for r in p["rules"]:
        for n in r["syscalls"]:
            by_name.setdefault(n, []).append(r)
    suspects = {n: rs for n, rs in by_name.items()
                if len({json.dumps(r["action"], sort_keys=True) for r in rs}) > 1}
    mentioned = sorted({c for rs in suspects.values() for r in rs
                        for c in r.get("caps", []) + r.get("unless_caps", [])})
    for n, rs in sorted(suspects.items()):
        for k in range(len(mentioned) + 1):
            for combo in itertools.combinations(mentioned, k):
                caps = set(combo)
                for abi in abis:
                    acts = {json.dumps(r["action"], sort_keys=True): rule_name(r)
                            for r in rs if rule_active(r, caps, abi)}
                    if len(acts) > 1:
                        report.error(f"{n!r} gets different actions from rules "
                                     f"{sorted(acts.values())} with caps {sorted(caps)} on {abi}")
                        return


# --------------------------------------------------------------------------------------------
# policy assertions (what rbuild's RUN sandbox and its tests rely on)
# --------------------------------------------------------------------------------------------

AF = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17,
      "AF_ALG": 38, "AF_VSOCK": 40, "AF_UNSPEC_HIGH": 46, "AF_DECNET": 12}
CLONE_NEW = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
             "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
             "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000}
THREAD_FLAGS = 0x003D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
FORK_FLAGS = 0x01200011    # CLONE_CHILD_SETTID|CLONE_CHILD_CLEARTID|SIGCHLD

DENIED_WITH_DEFAULT_CAPS = (
    "mount umount umount2 unshare setns pivot_root fsopen fsconfig fsmount fspick move_mount "
    "open_tree mount_setattr sethostname setdomainname bpf perf_event_open keyctl add_key "
    "request_key userfaultfd io_uring_setup io_uring_enter io_uring_register kexec_load "
    "kexec_file_load init_module finit_module delete_module reboot swapon swapoff acct "
    "open_by_handle_at settimeofday clock_settime iopl ioperm syslog lookup_dcookie quotactl "
    "kcmp process_madvise pidfd_getfd mbind set_mempolicy vhangup uselib nfsservctl "
    "lsm_set_self_attr lsm_get_self_attr"
).split()
ALLOWED_WITH_DEFAULT_CAPS = (
    "read write openat execve exit_group wait4 fork vfork chroot chown fchownat mknodat setuid "
    "setgid setgroups capset kill ptrace socketpair connect prctl seccomp statx getdents64"
).split()


def run_assertions(p, tables, abis, report):
    passed = 0
    caps = DOCKER_DEFAULT_CAPS
    admin = caps | {"CAP_SYS_ADMIN"}

    def expect(cond, msg):
        nonlocal passed
        if cond:
            passed += 1
        else:
            report.error("policy assertion failed: " + msg)

    for abi in abis:
        def d(name, *args, c=caps):
            return decide(p, tables, c, abi, name, args)
        for n in DENIED_WITH_DEFAULT_CAPS:
            if n in tables[abi]:
                expect(d(n) != "allow", f"{n} must be denied with the default caps on {abi}")
        for n in ALLOWED_WITH_DEFAULT_CAPS:
            if n in tables[abi]:
                expect(d(n) == "allow", f"{n} must be allowed with the default caps on {abi}")
        if "clone" in tables[abi]:
            expect(d("clone", THREAD_FLAGS) == "allow", f"clone(thread flags) allowed on {abi}")
            expect(d("clone", FORK_FLAGS) == "allow", f"clone(fork flags) allowed on {abi}")
            for flag, bit in CLONE_NEW.items():
                expect(d("clone", FORK_FLAGS | bit) != "allow",
                       f"clone({flag}) must be denied with the default caps on {abi}")
                expect(d("clone", FORK_FLAGS | bit, c=admin) == "allow",
                       f"clone({flag}) must be allowed with CAP_SYS_ADMIN on {abi}")
        if "clone3" in tables[abi]:
            expect(d("clone3") == {"errno": 38}, f"clone3 must fail with ENOSYS on {abi}")
            expect(d("clone3", c=admin) == "allow", f"clone3 allowed with CAP_SYS_ADMIN on {abi}")
        for n in ("mount", "umount2", "unshare", "setns"):
            if n in tables[abi]:
                expect(d(n, c=admin) == "allow", f"{n} allowed with CAP_SYS_ADMIN on {abi}")
        if "socket" in tables[abi]:
            for fam in ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
                expect(d("socket", AF[fam]) == "allow", f"socket({fam}) allowed on {abi}")
            for fam in ("AF_ALG", "AF_VSOCK", "AF_DECNET", "AF_UNSPEC_HIGH"):
                expect(d("socket", AF[fam]) != "allow", f"socket({fam}) denied on {abi}")
        if "personality" in tables[abi]:
            for v in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
                expect(d("personality", v) == "allow", f"personality({v:#x}) allowed on {abi}")
            expect(d("personality", 0x0040000) != "allow",
                   f"personality(ADDR_NO_RANDOMIZE) denied on {abi}")
        if "ptrace" in tables[abi]:
            expect(decide(p, tables, caps, abi, "ptrace", kernel=(4, 4)) != "allow",
                   f"ptrace denied on kernels < 4.8 without CAP_SYS_PTRACE on {abi}")
    return passed


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------

def fmt_action(a):
    if isinstance(a, dict):
        return {1: "EPERM", 38: "ENOSYS"}.get(a["errno"], f"errno {a['errno']}")
    return a


def cond_text(r):
    parts = []
    for c in r.get("args", []):
        if c["op"] == "masked_eq":
            parts.append(f"(arg{c['index']} & {c['mask']:#x}) == {c['value']:#x}")
        else:
            sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[c["op"]]
            v = c["value"]
            parts.append(f"arg{c['index']} {sym} {v:#x}" if v >= 4096
                         else f"arg{c['index']} {sym} {v}")
    if "min_kernel" in r:
        parts.append(f"kernel >= {r['min_kernel']}")
    return " && ".join(parts)


def cap_set_summary(p, tables, abis, caps, label, verbose):
    print(f"{label}:")
    for abi in abis:
        eff = effective(p, tables, caps, abi)
        allowed = {n for n, acts in eff.items() if any(a == "allow" for a, _ in acts)}
        uncond = {n for n, acts in eff.items()
                  if any(a == "allow" and "args" not in r and "min_kernel" not in r
                         for a, r in acts)}
        other = {n: acts[0][0] for n, acts in eff.items() if n not in allowed}
        top = newer_threshold(abi, [tables[abi][n] for n in eff])
        line = (f"  {abi:8} {len(allowed):3} syscalls allowed "
                f"({len(uncond)} unconditionally, {len(allowed - uncond)} with conditions)")
        if other:
            line += "; " + ", ".join(f"{n} -> {fmt_action(a)}" for n, a in sorted(other.items()))
        if "newer_syscalls_action" in p and top is not None:
            rng = (f"{top:#x} < nr < {PRIVATE[abi]:#x}" if abi in ("x32", "arm")
                   else f"nr > {top}")
            line += f"; {rng} -> {fmt_action(p['newer_syscalls_action'])}"
        print(line)
        if verbose:
            for n in sorted(allowed - uncond):
                conds = [cond_text(r) for a, r in eff[n] if a == "allow"]
                print(f"             {n}: " + " || ".join(f"[{c}]" for c in conds))
    return


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", nargs="?", default=os.path.join(HERE, "default.json"))
    ap.add_argument("--tables", default=os.path.join(HERE, "syscalls.json"))
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="also list conditions and per-ABI name availability")
    ap.add_argument("--regen-tables", action="store_true",
                    help="regenerate the syscall table from UAPI headers (needs cpp)")
    opts = ap.parse_args()

    if opts.regen_tables:
        regen_tables(opts.tables)
        return 0

    report = Report()
    try:
        with open(opts.profile) as f:
            p = json.load(f)
    except (OSError, ValueError) as e:
        print(f"FAIL: cannot read {opts.profile}: {e}")
        return 1
    abis = check_schema(p, report)
    if report.errors:
        for e in report.errors:
            print("error:", e)
        print(f"FAIL: {len(report.errors)} schema error(s) in {opts.profile}")
        return 1

    tables, sources = load_tables(opts.tables, report)
    check_names(p, abis, tables, report)
    check_duplicates(p, report)
    check_conflicts(p, abis, report)
    declared = set(p.get("default_capabilities", DOCKER_DEFAULT_CAPS))
    if declared != DOCKER_DEFAULT_CAPS:
        report.error("default_capabilities differs from Docker's default set: "
                     f"extra {sorted(declared - DOCKER_DEFAULT_CAPS)}, "
                     f"missing {sorted(DOCKER_DEFAULT_CAPS - declared)}")
    passed = run_assertions(p, tables, abis, report)

    rules = p["rules"]
    names = {n for r in rules for n in r["syscalls"]}
    print(f"profile   {os.path.relpath(opts.profile)}: {p.get('name', '?')} v{p['version']}"
          + (f", from {p['upstream'].get('repository')}@{p['upstream'].get('commit', '?')[:12]}"
             if "upstream" in p else ""))
    print(f"tables    {sources}")
    print(f"actions   default {fmt_action(p['default_action'])}"
          + (f"; newer syscalls {fmt_action(p['newer_syscalls_action'])}"
             if "newer_syscalls_action" in p else "")
          + (f"; ABIs not compiled {fmt_action(p['unlisted_arch_action'])}"
             if "unlisted_arch_action" in p else ""))
    print("arches    " + "; ".join(
        a["arch"] + (" (+" + ", ".join(a["sub_arches"]) + ")" if a.get("sub_arches") else "")
        for a in p["architectures"]))
    print(f"rules     {len(rules)}: "
          f"{sum(1 for r in rules if is_unconditional(r))} unconditional, "
          f"{sum(1 for r in rules if 'args' in r)} with argument conditions, "
          f"{sum(1 for r in rules if 'caps' in r)} need capabilities, "
          f"{sum(1 for r in rules if 'unless_caps' in r)} only without capabilities, "
          f"{sum(1 for r in rules if 'arches' in r)} arch-specific, "
          f"{sum(1 for r in rules if 'min_kernel' in r)} kernel-gated")
    print(f"syscalls  {len(names)} distinct names in the profile")
    missing = {abi: sorted(n for n in names if n not in tables[abi]) for abi in abis}
    print("absent    names the compiler must skip per ABI: "
          + ", ".join(f"{abi} {len(m)}" for abi, m in missing.items()))
    if opts.verbose:
        for abi, m in missing.items():
            print(f"  not on {abi}: {' '.join(m)}")
    print()
    cap_set_summary(p, tables, abis, DOCKER_DEFAULT_CAPS,
                    f"default capability set ({len(DOCKER_DEFAULT_CAPS)} caps: "
                    + " ".join(sorted(c[4:] for c in DOCKER_DEFAULT_CAPS)) + ")", opts.verbose)
    gated = sorted({n for r in rules if "caps" in r for n in r["syscalls"]}
                   - {n for abi in abis for n, acts in
                      effective(p, tables, DOCKER_DEFAULT_CAPS, abi).items()
                      if any(a == "allow" for a, _ in acts)})
    print(f"  denied unless more capabilities are granted: {' '.join(gated)}")
    cap_set_summary(p, tables, abis, DOCKER_DEFAULT_CAPS | {"CAP_SYS_ADMIN"},
                    "default set + CAP_SYS_ADMIN", opts.verbose)
    cap_set_summary(p, tables, abis, set(CAPS), "all capabilities", False)
    print()
    for w in report.warnings:
        print("warning:", w)
    if report.errors:
        for e in report.errors:
            print("error:", e)
        print(f"FAIL: {len(report.errors)} error(s)")
        return 1
    print(f"OK: schema valid, names known, no duplicates or conflicts, "
          f"{passed} policy assertions passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
