"""Running benchmarks with the AVX2 kernels on an AVX-512 CPU (hypersan.research.isa)."""
import subprocess
import sys

import pytest

from hypersan.cli import main
from hypersan.research import isa

MASKABLE = isa.unavailable("avx2") is None and "avx512f" in isa.cpu_info()[1]
needs_mask = pytest.mark.skipif(not MASKABLE, reason=f"no AVX-512 to mask here: {isa.unavailable('avx2') or 'AVX2 CPU'}")

# one child process: what torch, hypersan and onnxruntime each see of the CPU
PROBE = r"""
import numpy as np, onnx, onnxruntime as ort, shutil, tempfile, torch
from onnx import TensorProto, helper, numpy_helper
from hypersan.prune.engine import vector_block
from hypersan.research.bench import machine
w = numpy_helper.from_array(np.ones((8, 16, 3, 3), np.float32), "w")
g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 28, 28])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 28, 28])], [w])
d = tempfile.mkdtemp()
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), d + "/m.onnx")
so = ort.SessionOptions()
so.optimized_model_filepath = d + "/o.onnx"
ort.InferenceSession(d + "/m.onnx", so, providers=["CPUExecutionProvider"])
# onnxruntime's blocked convolution pads output channels to its block: 16 with AVX-512, 8 with AVX2
rows = max(i.dims[0] for i in onnx.load(d + "/o.onnx").graph.initializer)
shutil.rmtree(d)
print(torch.backends.cpu.get_cpu_capability(), vector_block(), rows, machine()["isa"], sep="|")
"""


@needs_mask
def test_the_mask_gives_torch_onednn_and_onnxruntime_the_avx2_kernels(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYPERSAN_CACHE", str(tmp_path))
    exec(PROBE, {})  # this process, unmasked
    assert capsys.readouterr().out.strip().split("|") == ["AVX512", "16", "16", "AVX-512"]
    env = isa.masked_env("avx2")

    def probe(env) -> list[str]:
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1].split("|")

    assert env["HYPERSAN_ISA"] == "avx2" and "isa" in env["LD_PRELOAD"] and "-AVX512F" in env["GLIBC_TUNABLES"]
    assert probe(env) == ["AVX2", "8", "8", "AVX2 kernels, AVX-512 masked"]
    assert len(list((tmp_path / "isa").iterdir())) == 1  # the library, built once; no half-written file beside it


@needs_mask
def test_faults_that_are_not_cpuid_still_reach_the_program(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERSAN_CACHE", str(tmp_path))
    env = isa.masked_env("avx2")
    # Python's fault handler installed before numpy asks the CPU: CPUID is still answered, and a real fault is
    # still reported by the handler and kills the process
    ok = subprocess.run([sys.executable, "-X", "faulthandler", "-c", "from numpy._core._multiarray_umath import "
                         "__cpu_features__ as f; print(f['AVX512F'], f['AVX2'])"], capture_output=True, text=True,
                        env=env)
    assert ok.returncode == 0 and ok.stdout.split() == ["False", "True"], ok.stderr[-500:]
    bad = subprocess.run([sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == -11 and "Segmentation fault" in bad.stderr
    plain = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], env=env)
    assert plain.returncode == -11


def test_unknown_instruction_sets_and_the_command_line(monkeypatch, capsys):
    assert "one of avx2" in isa.unavailable("avx512")
    with pytest.raises(isa.IsaError, match="unknown instruction set"):
        isa.masked_env("sse2")
    assert isa.main(["avx512", "--", "true"]) == 2 and "unknown instruction set" in capsys.readouterr().err
    assert isa.main(["avx2"]) == 2 and "usage" in capsys.readouterr().err
    assert isa.main(["--help"]) == 0 and "CPUID faulting" in capsys.readouterr().out
    assert isa.active() is None  # this process: the CPU as it is

    runs = []

    def fake_run(argv, env):
        runs.append((argv, env))
        return subprocess.CompletedProcess(argv, 3)

    monkeypatch.delenv("HYPERSAN_ISA", raising=False)
    monkeypatch.setattr(isa, "masked_env", lambda name: {"HYPERSAN_ISA": name})
    monkeypatch.setattr(isa.subprocess, "run", fake_run)
    # bench runs itself again, arguments as given, under the mask, and exits as that run did
    assert main(["bench", "--isa", "avx2", "--checkpoint", "nowhere", "--repeats", "2"]) == 3
    assert runs == [([sys.executable, "-m", "hypersan", "bench", "--isa", "avx2", "--checkpoint", "nowhere",
                      "--repeats", "2"], {"HYPERSAN_ISA": "avx2"})]
    monkeypatch.setattr(isa, "active", lambda: "avx2")  # already under it: runs here (and fails on the checkpoint)
    assert main(["bench", "--isa", "avx2", "--checkpoint", "nowhere"]) != 0
    assert "nowhere" in capsys.readouterr().err
    monkeypatch.undo()

    def refuse(name):
        raise isa.IsaError("this CPU (or its hypervisor) does not offer CPUID faulting")

    monkeypatch.delenv("HYPERSAN_ISA", raising=False)
    monkeypatch.setattr(isa, "masked_env", refuse)
    assert main(["bench", "--isa", "avx2"]) == 2
    assert "--isa avx2: this CPU (or its hypervisor) does not offer CPUID faulting" in capsys.readouterr().err


def test_the_machine_record_names_the_cpu_generation_beside_its_model_name(tmp_path, monkeypatch):
    import builtins

    from hypersan.research.bench import machine_line

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\ncpu family\t: 9\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
    assert isa.cpu_generation() == "family 25, model 17"  # the first CPU's, read up to its blank line
    assert isa.cpu_info() == ("AMD EPYC", {"fpu", "avx2", "avx512f"})  # the same reading
    line = machine_line({"cpu": "AMD EPYC", "generation": isa.cpu_generation(), "isa": "AVX-512", "threads": 2,
                         "cores": 2})
    assert line == "on AMD EPYC (family 25, model 17; AVX-512), 2 thread(s) of 2 core(s)"
    info.write_text("processor\t: 0\nmodel name\t: some CPU\n")
    assert isa.cpu_generation() == "" and isa.cpu_info() == ("some CPU", set())
    assert machine_line({"cpu": "x", "isa": "AVX2", "threads": 1, "cores": 2}) == "on x (AVX2), 1 thread(s) of 2 core(s)"
