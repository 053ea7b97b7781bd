//! The seccomp filter of RUN steps: `seccomp/default.json` (Docker's default policy in
//! rbuild's own schema, see `seccomp/README.md`) compiled in-process to classic BPF for
//! the host's ABIs (x86_64 with x86 and x32; aarch64 with arm; riscv64), so the static
//! binary needs no libseccomp.
//!
//! Layout of the program: check the ABI, load the syscall number, then one block per
//! syscall the profile names (its rules, ORed; each rule's argument tests ANDed), then
//! ENOSYS for numbers above every known one (as runc does, so newer libcs fall back) and
//! the default errno for the rest.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

const PROFILE: &str = include_str!("../../seccomp/default.json");
const SYSCALLS: &str = include_str!("../../seccomp/syscalls.json");

#[derive(Debug, Deserialize)]
struct Profile {
    default_action: Action,
    newer_syscalls_action: Action,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Named {
    Allow,
    KillProcess,
    KillThread,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Action {
    Named(Named),
    Errno { errno: u16 },
}

impl Action {
    fn ret(self) -> u32 {
        match self {
            Action::Named(Named::Allow) => SECCOMP_RET_ALLOW,
            Action::Named(Named::KillProcess) => SECCOMP_RET_KILL_PROCESS,
            Action::Named(Named::KillThread) => SECCOMP_RET_KILL_THREAD,
            Action::Errno { errno } => SECCOMP_RET_ERRNO | u32::from(errno),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Rule {
    syscalls: Vec<String>,
    action: Action,
    #[serde(default)]
    args: Vec<Cond>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    unless_caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Cond {
    index: u32,
    op: String,
    value: u64,
    #[serde(default)]
    mask: u64,
    #[serde(default = "default_width")]
    width: u32,
}

fn default_width() -> u32 {
    64
}

#[derive(Debug, Deserialize)]
struct Tables {
    abis: BTreeMap<String, BTreeMap<String, u32>>,
}

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0x0000_0000;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const X32_BIT: u32 = 0x4000_0000;

/// A compiled filter, ready to load into the process about to exec.
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
}

/// An ABI the filter covers: its name in the profile and its `AUDIT_ARCH_*` value.
struct Abi {
    name: &'static str,
    audit_arch: u32,
}

fn host_abis() -> Result<Vec<Abi>> {
    let abi = |name, audit_arch| Abi { name, audit_arch };
    Ok(match std::env::consts::ARCH {
        // x32 shares AUDIT_ARCH_X86_64 and is told apart by the number's 0x40000000 bit.
        "x86_64" => vec![abi("x86_64", 0xC000_003E), abi("x86", 0x4000_0003)],
        "aarch64" => vec![abi("aarch64", 0xC000_00B7), abi("arm", 0x4000_0028)],
        "riscv64" => vec![abi("riscv64", 0xC000_00F3)],
        other => bail!("no seccomp support for {other}"),
    })
}

impl Filter {
    /// Compiles the built-in profile for a step holding capabilities `caps`
    /// (`CAP_CHOWN`, …), on a kernel of version `kernel` (major, minor).
    pub fn default_profile(caps: &BTreeSet<String>, kernel: (u32, u32)) -> Result<Filter> {
        let profile: Profile = serde_json::from_str(PROFILE).context("seccomp/default.json")?;
        let tables: Tables = serde_json::from_str(SYSCALLS).context("seccomp/syscalls.json")?;
        let mut p = Program::default();
        let abis = host_abis()?;
        let kill = p.label();
        let mut next_abi = p.label();
        p.stmt(LD_W_ABS, OFF_ARCH);
        for (i, abi) in abis.iter().enumerate() {
            if i > 0 {
                p.place(next_abi);
                next_abi = p.label();
                p.stmt(LD_W_ABS, OFF_ARCH);
            }
            let last = i + 1 == abis.len();
            // Sections are longer than a conditional jump reaches: skip over a far jump.
            p.jump(JEQ_K, abi.audit_arch, Target::Skip(1), Target::Next);
            p.far(if last { kill } else { next_abi });
            p.stmt(LD_W_ABS, OFF_NR);
            if abi.name == "x86_64" {
                let x32 = p.label();
                p.jump(JSET_K, X32_BIT, Target::Next, Target::Skip(1));
                p.far(x32);
                emit_abi(&mut p, &profile, &tables, "x86_64", caps, kernel)?;
                p.place(x32);
                emit_abi(&mut p, &profile, &tables, "x32", caps, kernel)?;
            } else {
                emit_abi(&mut p, &profile, &tables, abi.name, caps, kernel)?;
            }
        }
        if abis.len() > 1 {
            p.place(next_abi);
        }
        p.place(kill);
        p.ret(SECCOMP_RET_KILL_PROCESS);
        Ok(Filter {
            program: p.resolve()?,
        })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// True for an empty program (never produced by the compiler).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread (no_new_privs must be set).
    pub fn load(&self) -> Result<()> {
        let prog = libc::sock_fprog {
            len: u16::try_from(self.program.len())
                .map_err(|_| anyhow!("seccomp program too long"))?,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at a valid program that outlives the call.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            bail!(
                "cannot load the seccomp filter: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

/// The rules of one ABI, syscall by syscall, then the fallbacks.
fn emit_abi(
    p: &mut Program,
    profile: &Profile,
    tables: &Tables,
    abi: &str,
    caps: &BTreeSet<String>,
    kernel: (u32, u32),
) -> Result<()> {
    let table = tables
        .abis
        .get(abi)
        .ok_or_else(|| anyhow!("no syscall table for {abi}"))?;
    let mut by_nr: BTreeMap<u32, Vec<&Rule>> = BTreeMap::new();
    for rule in &profile.rules {
        let applies = (rule.arches.is_empty() || rule.arches.iter().any(|a| a == abi))
            && rule.caps.iter().all(|c| caps.contains(c))
            && !rule.unless_caps.iter().any(|c| caps.contains(c))
            && rule
                .min_kernel
                .as_deref()
                .is_none_or(|v| parse_version(v).is_some_and(|min| kernel >= min));
        if !applies {
            continue;
        }
        for name in &rule.syscalls {
            if let Some(&nr) = table.get(name) {
                by_nr.entry(nr).or_default().push(rule);
            }
        }
    }
    let default = profile.default_action.ret();
    for (nr, rules) in &by_nr {
        let next_syscall = p.label();
        p.jump(JEQ_K, *nr, Target::Next, Target::Label(next_syscall));
        for rule in rules {
            if rule.args.is_empty() {
                p.ret(rule.action.ret());
                break;
            }
            let next_rule = p.label();
            for c in &rule.args {
                emit_cond(p, c, next_rule)?;
            }
            p.ret(rule.action.ret());
            p.place(next_rule);
            // The conditions clobbered the accumulator.
            p.stmt(LD_W_ABS, OFF_NR);
        }
        if rules.iter().all(|r| !r.args.is_empty()) {
            p.ret(default);
        }
        p.place(next_syscall);
    }
    let newest = table.values().copied().max().unwrap_or(0);
    p.jump(JGT_K, newest, Target::Next, Target::Skip(1));
    p.ret(profile.newer_syscalls_action.ret());
    p.ret(default);
    Ok(())
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.trim().parse().ok()?))
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let digits: String = release
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    parse_version(&digits).unwrap_or((0, 0))
}

/// One argument test; jumps to `fail` when it does not hold, falls through when it does.
fn emit_cond(p: &mut Program, c: &Cond, fail: usize) -> Result<()> {
    if c.index > 5 {
        bail!("seccomp rule tests argument {} (there are 6)", c.index);
    }
    let lo_off = OFF_ARGS + 8 * c.index;
    let hi_off = lo_off + 4;
    let (vlo, vhi) = (c.value as u32, (c.value >> 32) as u32);
    let (mlo, mhi) = (c.mask as u32, (c.mask >> 32) as u32);
    let wide = c.width == 64;
    let pass = p.label();
    let f = Target::Label(fail);
    let ok = Target::Label(pass);
    match c.op.as_str() {
        "eq" => {
            if wide {
                p.stmt(LD_W_ABS, hi_off);
                p.jump(JEQ_K, vhi, Target::Next, f);
            }
            p.stmt(LD_W_ABS, lo_off);
            p.jump(JEQ_K, vlo, Target::Next, f);
        }
        "ne" => {
            if wide {
                p.stmt(LD_W_ABS, hi_off);
                p.jump(JEQ_K, vhi, Target::Next, ok);
            }
            p.stmt(LD_W_ABS, lo_off);
            p.jump(JEQ_K, vlo, f, Target::Next);
        }
        "masked_eq" => {
            if wide {
                p.stmt(LD_W_ABS, hi_off);
                p.stmt(AND_K, mhi);
                p.jump(JEQ_K, vhi & mhi, Target::Next, f);
            }
            p.stmt(LD_W_ABS, lo_off);
            p.stmt(AND_K, mlo);
            p.jump(JEQ_K, vlo & mlo, Target::Next, f);
        }
        "gt" | "ge" => {
            if wide {
                p.stmt(LD_W_ABS, hi_off);
                p.jump(JGT_K, vhi, ok, Target::Next);
                p.jump(JEQ_K, vhi, Target::Next, f);
            }
            p.stmt(LD_W_ABS, lo_off);
            let code = if c.op == "gt" { JGT_K } else { JGE_K };
            p.jump(code, vlo, Target::Next, f);
        }
        "lt" | "le" => {
            if wide {
                p.stmt(LD_W_ABS, hi_off);
                p.jump(JGT_K, vhi, f, Target::Next);
                p.jump(JEQ_K, vhi, Target::Next, ok);
            }
            p.stmt(LD_W_ABS, lo_off);
            let code = if c.op == "lt" { JGE_K } else { JGT_K };
            p.jump(code, vlo, f, Target::Next);
        }
        other => bail!("unknown seccomp operator {other:?}"),
    }
    p.place(pass);
    Ok(())
}

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The next instruction.
    Next,
    /// Skip this many instructions.
    Skip(u8),
    /// A label.
    Label(usize),
}

enum Item {
    Stmt(u16, u32),
    Far(usize),
    Jump(u16, u32, Target, Target),
    Place(usize),
}

/// A BPF program under construction, with symbolic labels.
#[derive(Default)]
struct Program {
    items: Vec<Item>,
    labels: usize,
}

impl Program {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn place(&mut self, l: usize) {
        self.items.push(Item::Place(l));
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.items.push(Item::Stmt(code, k));
    }
    fn far(&mut self, l: usize) {
        self.items.push(Item::Far(l));
    }
    fn ret(&mut self, k: u32) {
        self.stmt(RET_K, k);
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.items.push(Item::Jump(code, k, jt, jf));
    }

    fn resolve(self) -> Result<Vec<libc::sock_filter>> {
        let mut at = vec![usize::MAX; self.labels];
        let mut pos = 0;
        for it in &self.items {
            match it {
                Item::Place(l) => at[*l] = pos,
                _ => pos += 1,
            }
        }
        let mut out = Vec::with_capacity(pos);
        for it in &self.items {
            match it {
                Item::Place(_) => {}
                Item::Stmt(code, k) => out.push(libc::sock_filter {
                    code: *code,
                    jt: 0,
                    jf: 0,
                    k: *k,
                }),
                Item::Far(l) => {
                    let here = out.len();
                    let dest = at[*l];
                    if dest == usize::MAX || dest <= here {
                        bail!("seccomp compiler: bad jump");
                    }
                    out.push(libc::sock_filter {
                        code: JA,
                        jt: 0,
                        jf: 0,
                        k: u32::try_from(dest - here - 1)?,
                    });
                }
                Item::Jump(code, k, jt, jf) => {
                    let here = out.len();
                    let off = |t: &Target| -> Result<u8> {
                        match t {
                            Target::Next => Ok(0),
                            Target::Skip(n) => Ok(*n),
                            Target::Label(l) => {
                                let dest = at[*l];
                                if dest == usize::MAX || dest <= here {
                                    bail!("seccomp compiler: bad jump");
                                }
                                u8::try_from(dest - here - 1)
                                    .map_err(|_| anyhow!("seccomp compiler: jump too long"))
                            }
                        }
                    };
                    out.push(libc::sock_filter {
                        code: *code,
                        jt: off(jt)?,
                        jf: off(jf)?,
                        k: *k,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_caps() -> BTreeSet<String> {
        crate::sandbox::caps::DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// A tiny interpreter for the instructions the compiler emits.
    fn eval(f: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                o if o >= 16 => {
                    let i = ((o - 16) / 8) as usize;
                    if (o - 16) % 8 == 0 {
                        args[i] as u32
                    } else {
                        (args[i] >> 32) as u32
                    }
                }
                _ => 0,
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = f.program[pc];
            pc += 1;
            let cond = |c: bool| if c { i.jt as usize } else { i.jf as usize };
            match i.code {
                LD_W_ABS => acc = word(i.k),
                AND_K => acc &= i.k,
                RET_K => return i.k,
                JEQ_K => pc += cond(acc == i.k),
                JGT_K => pc += cond(acc > i.k),
                JGE_K => pc += cond(acc >= i.k),
                JSET_K => pc += cond(acc & i.k != 0),
                JA => pc += i.k as usize,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn default_policy_allows_normal_calls_and_denies_namespaces() {
        let f = Filter::default_profile(&default_caps(), (6, 1)).unwrap();
        let x86_64 = 0xC000_003E;
        let nr = |n: &str| libc_nr(n);
        assert_eq!(eval(&f, x86_64, nr("read"), [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(eval(&f, x86_64, nr("mount"), [0; 6]), SECCOMP_RET_ERRNO | 1);
        assert_eq!(
            eval(&f, x86_64, nr("unshare"), [0; 6]),
            SECCOMP_RET_ERRNO | 1
        );
        assert_eq!(
            eval(&f, x86_64, nr("clone3"), [0; 6]),
            SECCOMP_RET_ERRNO | 38
        );
        // clone: plain fork allowed, a new user namespace refused.
        assert_eq!(
            eval(&f, x86_64, nr("clone"), [0x11, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            eval(&f, x86_64, nr("clone"), [0x1000_0000, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 1
        );
        // socket families: AF_INET yes, AF_VSOCK (40) no.
        assert_eq!(
            eval(&f, x86_64, nr("socket"), [2, 1, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            eval(&f, x86_64, nr("socket"), [40, 1, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 1
        );
        // personality: only the listed personas.
        assert_eq!(
            eval(&f, x86_64, nr("personality"), [0; 6]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            eval(&f, x86_64, nr("personality"), [4, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ERRNO | 1
        );
        // Unknown newer syscalls: ENOSYS; another architecture: killed.
        assert_eq!(eval(&f, x86_64, 999, [0; 6]), SECCOMP_RET_ERRNO | 38);
        assert_eq!(eval(&f, 0x1234, 0, [0; 6]), SECCOMP_RET_KILL_PROCESS);
        // With CAP_SYS_ADMIN, mount is allowed.
        let mut caps = default_caps();
        caps.insert("CAP_SYS_ADMIN".into());
        let admin = Filter::default_profile(&caps, (6, 1)).unwrap();
        assert_eq!(eval(&admin, x86_64, nr("mount"), [0; 6]), SECCOMP_RET_ALLOW);
    }

    #[cfg(target_arch = "x86_64")]
    fn libc_nr(name: &str) -> u32 {
        let n = match name {
            "read" => libc::SYS_read,
            "mount" => libc::SYS_mount,
            "unshare" => libc::SYS_unshare,
            "clone3" => libc::SYS_clone3,
            "clone" => libc::SYS_clone,
            "socket" => libc::SYS_socket,
            "personality" => libc::SYS_personality,
            other => panic!("{other}"),
        };
        n as u32
    }
}
