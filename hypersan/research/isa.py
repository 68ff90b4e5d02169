"""Run a benchmark as if the CPU had no AVX-512: the AVX2 kernels of torch, oneDNN and onnxruntime, on this CPU.

Latency ratios depend on which vector kernels run: onnxruntime's blocked convolutions work on blocks of 16
channels with AVX-512 and of 8 with AVX2, and oneDNN picks its kernels the same way. Every one of these
libraries asks the CPU which instructions it has (the CPUID instruction) and takes the widest path it is told
of. Where Linux offers CPUID faulting (`cpuid_fault` in /proc/cpuinfo, on many recent Intel and AMD CPUs and
the KVM guests on them), a small preloaded library makes CPUID trap in this process, answers it
with the true values less the AVX-512 family (and AVX-VNNI and AVX-512 BF16, absent on AVX2-only EPYCs), and
glibc's own string functions are told the same through GLIBC_TUNABLES. torch then reports `AVX2`
(`torch.backends.cpu.get_cpu_capability()`), oneDNN `Intel AVX2`, and onnxruntime blocks channels by 8.

The trap arrives as SIGSEGV. A program's own SIGSEGV handler (Python's faulthandler, torch's data-loader
workers) is kept aside and still called for every fault that is not CPUID; a program that installs one through
the raw system call, not through libc, would take the trap itself and stop.

What this is not: an AVX2-era core. The instructions are AVX2's, but caches, clocks and the execution units are
this CPU's, so ratios measured this way tell which kernels a pruned net meets on an AVX2 machine, not its times.

    python -m hypersan.research.isa avx2 -- hypersan bench --runtime onnxruntime --batches 1,256
    hypersan bench --isa avx2 ...        # the same: the command runs itself again under the mask
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ENV = "HYPERSAN_ISA"  # set in a process that runs under a mask: which one (so a command re-executes only once)
ISAS = ("avx2",)

# CPUID leaf 7 bits that name AVX-512 instructions (and the AVX-VNNI / AVX-512 BF16 bits of sub-leaf 1), cleared
# in the answers: EBX 16 F, 17 DQ, 21 IFMA, 26 PF, 27 ER, 28 CD, 30 BW, 31 VL; ECX 1 VBMI, 6 VBMI2, 8 GFNI,
# 11 VNNI, 12 BITALG, 14 VPOPCNTDQ; EDX 2 4VNNIW, 3 4FMAPS, 8 VP2INTERSECT, 22-25 AMX BF16 / FP16 / TILE / INT8;
# sub-leaf 1 EAX 4 AVX-VNNI, 5 AVX-512 BF16.
_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <asm/prctl.h>
#include <cpuid.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static struct sigaction program_sa;  /* the SIGSEGV handler the program asked for; the trap's stays installed */

static void mask(unsigned leaf, unsigned sub, unsigned *a, unsigned *b, unsigned *c, unsigned *d) {
    if (leaf == 7 && sub == 0) {
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        *c &= ~((1u << 1) | (1u << 6) | (1u << 8) | (1u << 11) | (1u << 12) | (1u << 14));
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        *a &= ~((1u << 4) | (1u << 5));
    }
}

static sigaction_fn real_sigaction(void) {
    static sigaction_fn fn;
    if (!fn) fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return fn;
}

/* CPUID traps here (SIGSEGV) and is answered; any other fault goes to the program's handler, or to the
   default action when the instruction runs again */
static void on_fault(int sig, siginfo_t *si, void *ctx) {
    greg_t *g = ((ucontext_t *)ctx)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    unsigned a, b, c, d, leaf, sub;
    if (si->si_code > 0 && ip[0] == 0x0f && ip[1] == 0xa2) {
        leaf = (unsigned)g[REG_RAX];
        sub = (unsigned)g[REG_RCX];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, a, b, c, d);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, &a, &b, &c, &d);
        g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
        g[REG_RIP] += 2;
        return;
    }
    if ((program_sa.sa_flags & SA_SIGINFO) && program_sa.sa_sigaction) {
        program_sa.sa_sigaction(sig, si, ctx);
    } else if (program_sa.sa_handler != SIG_DFL && program_sa.sa_handler != SIG_IGN) {
        program_sa.sa_handler(sig);
    } else {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction()(SIGSEGV, &dfl, 0);
    }
}

/* a program's own SIGSEGV handler (Python's faulthandler, torch's workers) is kept aside and called from the trap */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV) return real_sigaction()(sig, act, old);
    if (old) *old = program_sa;
    if (act) program_sa = *act;
    return 0;
}

typedef void (*handler_fn)(int);

handler_fn signal(int sig, handler_fn handler) {
    static handler_fn (*real)(int, handler_fn);
    struct sigaction sa, old;
    if (sig != SIGSEGV) {
        if (!real) real = (handler_fn (*)(int, handler_fn))dlsym(RTLD_NEXT, "signal");
        return real(sig, handler);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, &old);
    return old.sa_handler;
}

/* threads inherit the trap; execve drops it, and the preload sets it again in the new program */
__attribute__((constructor)) static void start(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    program_sa.sa_handler = SIG_DFL;
    real_sigaction()(SIGSEGV, &sa, 0);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}
"""
# glibc chose its string functions before the preload ran; its tunables make it choose AVX2 ones
_GLIBC_MASK = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"


class IsaError(RuntimeError):
    """This machine cannot run a command under the asked instruction-set mask; the message says why."""


def _first_cpu() -> dict[str, str]:
    """The fields of the first CPU in /proc/cpuinfo (up to its blank line), as the kernel reports them: the CPU as
    it is, whatever a mask tells this process; {} where there is no /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_info() -> tuple[str, set[str]]:
    """(model name, feature flags) of the first CPU in /proc/cpuinfo; ("", set()) where there is none."""
    cpu = _first_cpu()
    return cpu.get("model name", ""), set(cpu.get("flags", "").split())


def cpu_generation() -> str:
    """"family 25, model 17": the vendor's family and model numbers of the first CPU, which tell generations
    apart where a virtual machine reports a generic name ("AMD EPYC" for Zen 4 and Zen 5 alike); "" if unknown."""
    cpu = _first_cpu()
    return f"family {cpu['cpu family']}, model {cpu['model']}" if "cpu family" in cpu and "model" in cpu else ""


def _compiler() -> str | None:
    """The C compiler the mask is built with: $CC, else cc, else gcc (None: none found)."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def unavailable(isa: str) -> str | None:
    """Why a command cannot run under `isa` here (None: it can)."""
    if isa not in ISAS:
        return f"unknown instruction set {isa!r}: one of {', '.join(ISAS)}"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"masking the CPU's instruction sets needs Linux on x86-64 (this is {sys.platform}, {platform.machine()})"
    flags = cpu_info()[1]
    if "avx2" not in flags:
        return "this CPU has no AVX2: there is nothing to run the AVX2 kernels on"
    if "avx512f" not in flags:
        return None  # already an AVX2 machine: nothing to mask
    if "cpuid_fault" not in flags:
        return ("this CPU (or its hypervisor) does not offer CPUID faulting (no `cpuid_fault` in /proc/cpuinfo), "
                "so what the libraries are told of the CPU cannot be changed; run on an AVX2 machine instead")
    if not _compiler():
        return "the AVX2 mask is a small C library built on first use: install a C compiler (apt-get install gcc)"
    return None


def shim_path(cache: Path | None = None) -> Path:
    """The compiled mask library, built on first use into hypersan's cache (atomically: a half-written library
    is never loaded)."""
    from ..io import user_cache_dir

    digest = hashlib.sha256(_SHIM.encode()).hexdigest()[:12]
    out = (cache or user_cache_dir()) / "isa" / f"mask-avx2-{digest}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cc = _compiler() or "cc"
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, lib = Path(tmp, "mask.c"), Path(tmp, "mask.so")
        src.write_text(_SHIM)
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise IsaError(f"building the AVX2 mask with {cc} failed:\n{r.stderr.strip()[-2000:]}")
        os.replace(lib, out)
    return out


def masked_env(isa: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that runs a program under `isa` (raises IsaError where this machine cannot)."""
    why = unavailable(isa)
    if why:
        raise IsaError(why)
    env = dict(os.environ if env is None else env)
    env[ENV] = isa
    if "avx512f" not in cpu_info()[1]:
        return env  # an AVX2 machine runs its own kernels
    env["LD_PRELOAD"] = " ".join(p for p in (str(shim_path()), env.get("LD_PRELOAD", "")) if p)
    env["GLIBC_TUNABLES"] = ":".join(p for p in (env.get("GLIBC_TUNABLES", ""), _GLIBC_MASK) if p)
    return env


def active() -> str | None:
    """The mask this process runs under (None: the CPU as it is): the environment names it, and on an AVX-512 CPU
    the mask's library is loaded in this process."""
    name = os.environ.get(ENV) or None
    if name is None or "avx512f" not in cpu_info()[1]:
        return name
    try:
        with open("/proc/self/maps") as f:
            return name if "/mask-avx2-" in f.read() else None
    except OSError:
        return None


def rerun(isa: str, argv: Sequence[str]) -> int | None:
    """Run `argv` under `isa` in a child process and return its exit status; None, at once, where this process
    already runs under it (the caller then does the work itself)."""
    if active() == isa:
        return None
    env = masked_env(isa)
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.run(list(argv), env=env).returncode


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if "--" in argv:
        i = argv.index("--")
        head, cmd = argv[:i], argv[i + 1:]
    else:
        head, cmd = argv[:1], argv[1:]
    if len(head) != 1 or not cmd:
        print("usage: python -m hypersan.research.isa avx2 -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        env = masked_env(head[0])
    except IsaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
