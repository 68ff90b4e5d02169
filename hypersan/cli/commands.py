"""The `hypersan` command: a thin layer over library functions."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from ..version import __version__
from ..shipped import checkpoint_help


CHECKPOINT_HELP = checkpoint_help()


def _resolve(args) -> int:
    import re

    from ..config import load_config
    from ..info import FASHION_MNIST
    from ..nn.checkpoint import checkpoint_vocabulary
    from ..language.grounding import Grounder, GroundingError
    from ..language.text import EncoderError, default_encoder
    from ..language.vocabulary import extend_vocabulary

    if not args.list and (args.text is None) == (args.file is None):
        raise ValueError('give either one request ("shoes and handbags") or --file FILE, not both or neither '
                         '(--list lists the classes)')
    info = checkpoint_vocabulary(args.checkpoint) if args.checkpoint else FASHION_MNIST
    if args.config:
        vocab = load_config(args.config).vocab
        info = extend_vocabulary(info, vocab.synonyms, vocab.groups)
    if args.list:
        if args.json:
            print(json.dumps({"classes": list(info.classes), "groups": dict(info.groups)}))
        else:
            print("\n".join(info.classes))
            for g, members in info.groups.items():
                print(f"{g}: {', '.join(map(str, members))}")
        return 0
    grounder = Grounder(info, lambda: default_encoder(args.encoder, args.device))  # loaded once, when first needed

    def show(g) -> str:
        if args.json:
            return json.dumps(g.to_dict())
        lines = [f"{c:<14} {g.scores[c]:.2f}" for c in g.classes]
        lines += [f'  "{m.text}" -> {"not " if m.exclude else ""}{m.target} ({m.how}, {m.score:.2f})' for m in g.matches]
        return "\n".join(lines)

    try:
        if args.text is not None and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", args.text):
            # class indices, as --classes takes them: "7" or "7,8"
            from ..data.subtasks import resolve_classes

            t = resolve_classes([int(i) for i in args.text.split(",")], info.classes)
            names = [info.classes[i] for i in t]
            print(json.dumps({"request": args.text, "classes": names, "indices": list(t), "how": "class indices"})
                  if args.json else "\n".join(f"{n:<14} index {i}" for n, i in zip(names, t)))
            return 0
        if args.text is not None:
            from ..language.budgets import split_budget

            try:
                words, budget = split_budget(args.text)  # a budget stated in words is shown, not grounded
                g = grounder.ground(words)
            except GroundingError as e:
                print(f"hypersan resolve: {e}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps({**g.to_dict(), **({"budget": budget} if budget is not None else {})}))
            else:
                print(show(g) + ("" if budget is None else f"\nbudget         {budget}"))
            return 0
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read requests from {args.file!r}: {e}") from None
        for line in text.splitlines():  # one output line per input line, blank ones included, in order
            try:
                g = grounder.ground(line)
                print(show(g) if args.json else f"{line}\t{', '.join(g.classes)}", flush=True)
            except GroundingError as e:
                print(json.dumps({"request": line, "error": str(e)}) if args.json else f"{line}\terror: {e}", flush=True)
        return 0
    except EncoderError as e:
        print(f"hypersan resolve: error: {e}", file=sys.stderr)
        return 2


def check_device(name: str) -> str:
    """A --device value, checked: auto, cpu, cuda or cuda:N (ValueError naming them otherwise)."""
    import re

    if name == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", name):
        return name
    raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")


def _engine(args):
    """The PruningEngine of --checkpoint on --device, reading training images from --data-dir when needed."""
    from ..prune.engine import PruningEngine
    from ..training.train import resolve_device

    device = resolve_device(check_device(getattr(args, "device", None) or "cpu"))
    quiet = getattr(args, "json", False)  # --json keeps stderr for errors too: machine-read runs stay quiet
    log = None if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    return PruningEngine.from_pretrained(args.checkpoint, map_location=device, data_dir=args.data_dir or None,
                                         seed=getattr(args, "seed", 0), log=log)


# `hypersan study KIND ...`: the research studies, each a module of hypersan.research with its own command line
STUDIES = {"glyphs": ("glyph_study", "adaptive nets against class-agnostic ones on the glyph set"),
           "budget": ("budget_study", "a budget-conditioned model against a fixed-gamma family"),
           "adaptivity": ("adaptivity", "per-subtask nets against the all-classes net with its head cut"),
           "questions": ("questions", "an ablation run's answers, question by question"),
           "reach": ("reach", "how small the per-subset peer gets before it breaks"),
           "grounding": ("grounding_eval", "requests in words against the class sets they should name"),
           "phrasings": ("phrasings", "a text-conditioned model on held-out phrasings"),
           "rounding": ("rounding", "accuracy of nets whose widths are rounded to multiples"),
           "variants": ("variants", "training variants scored beside an ablation run, against its dense arm and peer"),
           "ship-budget": ("ship_budget", "ship a budget-conditioned checkpoint with its study's figures")}


def _study(args) -> int:
    """`hypersan study KIND ...`: the study's own command line (its report logic is tested as research.report
    is)."""
    import importlib

    module = importlib.import_module(f"..research.{STUDIES[args.kind][0]}", __package__)
    program, sys.argv[0] = sys.argv[0], f"hypersan study {args.kind}"  # the study's usage line names its command
    try:
        return module.main(args.rest)
    finally:
        sys.argv[0] = program


def round_to_arg(value: str):
    """--round-to: a width multiple, or "auto" (the CPU's vector block)."""
    from ..config import ConfigError, parse_round_to

    try:
        return parse_round_to(value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a width multiple such as 16, 0 (none), or auto") from None


def _sweep(args) -> int:
    """`hypersan sweep PLAN ...`: training runs from a plan (hypersan.research.sweep)."""
    from ..research.sweep import main as run

    return run(args.rest)


def _eval(args) -> int:
    tune_allocator()  # before any large allocation: the passes over the test images reuse the heap
    from ..data.datasets import load_split
    from ..info import MissingSplitError, few_names
    from ..training.evaluate import evaluate, parse_subtasks

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of test images, got {args.limit}")
    _check_finetune(args.finetune)
    engine = _engine(args)
    if args.guard:
        engine.check_guard()  # before any data is read
    model = engine.model
    cfg = model.config
    split = "train" if args.split == "val" else "test"
    if args.test_data is not None:  # another dataset folder's test split, of the same classes
        from ..data.datasets import load_folder_dataset

        if args.split == "val":
            raise ValueError("--test-data scores another folder's test split; leave out --split val")
        x, y, other = load_folder_dataset("test", args.test_data)
        if list(other.classes) != list(model.classes) or tuple(other.input_shape) != tuple(model.info.input_shape):
            raise ValueError(f"--test-data {args.test_data}: its classes or image shape differ from the model's "
                             f"({len(other.classes)} classes {tuple(other.input_shape)} against "
                             f"{len(model.classes)} {tuple(model.info.input_shape)}); render it with the model's "
                             "classes (hypersan data glyphs --all-test)")
    else:
        try:
            x, y, _ = load_split(cfg.data, split, args.data_dir)
        except MissingSplitError as e:
            if e.split != "test":
                raise
            raise MissingSplitError(f"{e}, or score the validation split the model was chosen on: hypersan eval "
                                    "--split val", e.split) from None
    if args.split == "val":
        from ..training.train import split_training_data

        _, _, x, y, _ = split_training_data(cfg)
        if not len(y):
            raise ValueError("this model was trained without a validation split (data.val_size = 0); use --split test")
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    specs = args.subtasks or ["seen", "unseen"]
    subtasks = parse_subtasks(model, specs, seed=args.seed)
    if not subtasks:
        why = (" this model holds out no class combinations (its subtasks.holdout_fraction is 0), so 'unseen' is "
               "empty" if "unseen" in specs and not (model.holdout.explicit or model.holdout.fraction) else "")
        raise ValueError(f"no subtasks to evaluate for --subtasks {' '.join(specs)}:{why or ' the selection is empty'}"
                         "; try --subtasks seen, all, size=2 or a class list such as \"Sneaker,Bag\"")
    n_seen = sum(model.is_seen(t) for t in subtasks)
    tty = sys.stderr.isatty()
    print(f"evaluating {len(subtasks)} subtasks ({n_seen} seen, {len(subtasks) - n_seen} held-out) on {len(y):,} "
          f"{args.split} images: one dense pass, then per subtask BN calibration (unless cached) and a pass through "
          "its pruned net", file=sys.stderr, flush=True)
    budgets = _budgets(engine, args.budget)
    from ..io import user_cache_dir

    r = evaluate(engine, x, y, subtasks, progress=not args.json and tty, seed=args.seed,
                 log=None if tty else (lambda m: print(m, file=sys.stderr, flush=True)), budgets=budgets,
                 guard=args.guard, cache_dir=None if args.no_cache else user_cache_dir(), round_to=args.round_to,
                 round_mode=args.round_mode, finetune_steps=args.finetune)
    r = {"checkpoint": str(model.source), "split": args.split, **r}
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"checkpoint {model.source}, {args.split} split ({len(y)} images)")
    print(f"dense: acc {r['dense']['acc']:.4f}  mAP {r['dense']['map']:.4f}  MACs {r['dense']['macs']:,}")
    if r.get("absent_classes"):
        gone = r["absent_classes"]
        print(f"the {args.split} split has no images of {len(gone)} class(es) ({few_names(gone)}): the dense mAP "
              "averages the others")
    print(f"{'classes':<44} {'seen':>5}{' budget' if budgets and not args.guard else ''}"
          f"{'guarded b'.rjust(10) if args.guard else ''} {'acc':>7} {'dense acc':>9} {'mAP':>7} "
          f"{'dense mAP':>9} {'MAC ratio':>9} {'param ratio':>11}")
    for s in r["subtasks"]:
        name = ",".join(s["classes"])
        name = name if len(name) <= 44 else name[:41] + "..."
        bud = f" {s['budget']:6g}" if budgets else ""
        if "guard" in s:  # the budget asked for, and the one whose net the guard served
            bud = f" {s['guard']['requested']:g}→{s['guard']['budget']:g}".rjust(10)
        print(f"{name:<44} {str(s['seen']):>5}{bud} {s['acc']:7.4f} {s['dense_acc']:9.4f} {s['map']:7.4f} "
              f"{s['dense_map']:9.4f} {s['mac_ratio']:9.3f} {s['param_ratio']:11.3f}")
    print("dense acc, dense mAP: the dense net restricted to the same classes; MAC ratio, param ratio: the pruned "
          "net's over the dense net's")
    singles = [s for s in r["subtasks"] if s["size"] == 1]
    if singles:  # the decision rule the acc column used: a threshold calibrated on training images, or logit 0
        rule = ("at a logit threshold calibrated on labelled training images (--json adds acc_logit0, at logit 0)"
                if "threshold" in singles[0] else "at logit 0")
        print(f"single classes: acc is one-vs-rest accuracy over every {args.split} image, {rule}")
    return 0


def _train(args) -> int:
    from ..config import find_config, load_config
    from ..training.train import train

    path = find_config(args.config)
    if path != Path(args.config):  # a name of hypersan's own configs: say which file it is
        print(f"config: {path}", flush=True)
        args.config = str(path)
    cfg = load_config(path, args.set)
    if args.device:
        cfg.train.device = check_device(args.device)
    provenance = {"command": "hypersan " + " ".join(sys.argv[1:]) if sys.argv[1:] else None,
                  "config": args.config, "overrides": list(args.set)}
    import os

    from ..training.distributed import DistributedError, env_world_size

    try:
        train(cfg, args.out, resume=args.resume, force=args.force, allow_config_change=args.allow_config_change,
              log=lambda m: print(m, flush=True), provenance=provenance)
    except DistributedError as e:  # another process of a torchrun run failed: say so in one line
        print(f"hypersan train: error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") in ("", "0") or env_world_size() == 1:  # under torchrun rank 0 alone says it
        print(f"checkpoint written to {args.out}")
    return 0


def _budgets(engine, text: Optional[str]) -> Optional[list[float]]:
    """--budget "0.1,0.2": budgets checked against the model (BudgetError on one that takes none); None without."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--budget {text!r}: give MAC ratios to the dense net separated by commas, e.g. --budget "
                         "0.1,0.2,0.4") from None
    return [engine.check_budget(v) for v in values]


def _check_finetune(steps: int) -> None:
    if steps < 0:
        raise ValueError(f"--finetune takes a number of SGD steps, 0 or more (e.g. 200), got {steps}")


def _prune(args) -> int:
    import time

    from ..deploy.export import parse_formats
    from ..io import check_output_dir

    t0 = time.perf_counter()
    formats = parse_formats(args.format)
    if (args.classes is None) == (args.request is None):
        raise ValueError('give exactly one of --classes "Sneaker,Bag" or --request "shoes and handbags"')
    check_output_dir(args.out, "artifact", force=args.force)  # before any work
    _check_finetune(args.finetune)
    engine = _engine(args)
    if args.request is not None:
        classes = args.request  # grounded by the engine; GroundingError (a ValueError) names what was not understood
    else:
        classes = [c.strip() for c in args.classes.split(",")]
        if not any(classes):
            raise ValueError('--classes is empty; give class names or indices, e.g. --classes "Sneaker,Bag"')
        if not all(classes):
            raise ValueError(f"--classes {args.classes!r} has an empty name between commas")
        classes = [int(c) if c.isdigit() else c for c in classes]
    if args.int8_images < 1:
        raise ValueError(f"--int8-images must be at least 1, got {args.int8_images}")
    budgets = _budgets(engine, args.budget)
    if budgets is not None and len(budgets) != 1:
        raise ValueError(f"--budget {args.budget!r}: prune builds one net; give one budget, e.g. --budget 0.1")
    budget = None if budgets is None else budgets[0]
    net = None
    if args.finetune:
        from ..training.finetune import finetune_subnet

        print(f"fine-tuning the net {args.finetune} steps on the model's training images", file=sys.stderr,
              flush=True)
        net = finetune_subnet(engine, classes, args.finetune, fold_bn=not args.keep_bn, budget=budget,
                              guard=args.guard, round_to=args.round_to, round_mode=args.round_mode,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
    summary = engine.export(classes, args.out, formats, round_to=args.round_to, fold_bn=not args.keep_bn,
                            round_mode=args.round_mode, force=args.force, quantize=args.quantize,
                            int8_images=args.int8_images, budget=budget, guard=args.guard, net=net,
                            int8_weight_bits=args.int8_weight_bits)
    extra = {}
    if args.request is not None:
        extra = {"request": args.request}
    print(json.dumps({**summary, **extra, "seconds": time.perf_counter() - t0}))
    return 0


GUARD_HELP = ("a budget-conditioned model: weigh the nets at the smaller budgets 0.08, 0.12, 0.2, 0.3, 0.5 as well "
              "on the validation split, and serve the smallest whose net is the most accurate there (more budget "
              "then never buys a net that is worse on validation; costs a calibration per budget, once)")
FINETUNE_HELP = ("fine-tune the hypernetwork's net for the class set STEPS SGD steps on the model's training images "
                 "(its BCE with other classes' images as negatives, lr 0.01, batch 128), BN recalibrated, before "
                 "export: the accurate path, about 15 s per 200 steps for fmnist_b16 on 2 cores (default 0: the net "
                 "as the hypernetwork builds it)")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def tune_allocator() -> str:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only; process-wide).

    The entry points that time nets or pass over a whole test set (bench, demo, eval) call it before anything is
    allocated; the library never does. With glibc's defaults, large activations are mapped afresh and
    page-faulted on every forward, or not, depending on the heap's history: the same net's latency ratio then
    varies by up to 1.4x from one process to the next (`tools/bench_allocator.py`), and an eval's pass over the
    test images ran 1.1-1.8x slower (docs/RESULTS.md). Raising the mmap threshold to its maximum (32 MiB) and the
    trim threshold to 1 GiB makes every forward reuse the heap, as a tuned allocator (jemalloc, tcmalloc) would,
    for every buffer under 32 MiB (at batch 256 on 28x28 images the largest activation is 25.7 MB). Returns what
    was done.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return "default (not Linux)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        return "default (no glibc mallopt)"
    done = [d for d, ok in (("mmap threshold 32 MiB", mmap_ok), ("trim threshold 1 GiB", trim_ok)) if ok]
    return "glibc, " + ", ".join(done) if done else "default (mallopt refused)"


def _bench(args) -> int:
    if args.isa:  # this command again, in a child process that sees no AVX-512 (research.isa)
        from ..research.isa import IsaError, rerun

        try:
            status = rerun(args.isa, [sys.executable, "-m", "hypersan", *args.argv])
        except IsaError as e:
            raise ValueError(f"--isa {args.isa}: {e}") from None
        if status is not None:
            return status
    try:
        best_threads = [int(v) for v in args.best_threads.split(",") if v.strip()] if args.best_threads else []
    except ValueError:
        raise ValueError(f"--best-threads takes comma-separated thread counts, e.g. 1,2, not {args.best_threads!r}") \
            from None
    if best_threads and args.runtime is None:
        raise ValueError("--best-threads times onnxruntime sessions at each thread count; add --runtime onnxruntime")
    if args.layers and args.runtime not in (None, "eager", "onnxruntime"):
        raise ValueError("--layers profiles eager PyTorch (no --runtime) or onnxruntime (--runtime onnxruntime), "
                         f"one at a time; got --runtime {args.runtime}")
    allocator = "default" if args.default_allocator else tune_allocator()  # before any large allocation
    from ..research.bench import DEFAULT_SUBTASKS, format_table, machine, run_bench
    from ..training.evaluate import parse_subtasks

    engine = _engine(args)
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.layers:
        from ..research.bench import format_layer_profile, format_onnx_profile, layer_profile, onnx_layer_profile

        subtasks = parse_subtasks(engine.model, args.subtasks or ["size=2,n=1"], seed=args.seed)
        profile, form = ((onnx_layer_profile, format_onnx_profile) if args.runtime == "onnxruntime"
                         else (layer_profile, format_layer_profile))
        r = profile(engine, subtasks, batch=args.batch, threads=args.threads, repeats=args.repeats,
                    warmup=args.warmup, seed=args.seed, budget=args.budget, round_to=args.round_to,
                    round_mode=args.round_mode, log=log)
        r = {"checkpoint": str(engine.model.source), "allocator": allocator, "machine": machine(args.threads), **r}
        print(json.dumps(r) if args.json else form(r))
        return 0
    subtasks = parse_subtasks(engine.model, args.subtasks or DEFAULT_SUBTASKS, seed=args.seed)
    if args.runtime is not None:
        from ..research.bench import format_runtime_table, run_runtime_bench
        from ..deploy.runtimes import parse_runtimes

        try:
            batches = [int(b) for b in args.batches.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--batches takes comma-separated batch sizes, e.g. 1,256, not {args.batches!r}") from None
        r = run_runtime_bench(engine, subtasks, parse_runtimes(args.runtime), batches=batches, threads=args.threads,
                              repeats=args.repeats, warmup=args.warmup, seed=args.seed, log=log, budget=args.budget,
                              round_to=args.round_to, round_mode=args.round_mode, best_threads=best_threads,
                              settle=args.settle)
        r = {"checkpoint": str(engine.model.source), "allocator": allocator, "machine": machine(args.threads), **r}
        print(json.dumps(r) if args.json else format_runtime_table(r))
        return 0
    r = run_bench(engine, subtasks, batch=args.batch, threads=args.threads, repeats=args.repeats,
                  warmup=args.warmup, round_to=args.round_to, seed=args.seed, fold_bn=not args.keep_bn,
                  round_mode=args.round_mode, log=log, budget=args.budget, settle=args.settle)
    r = {"checkpoint": str(engine.model.source), "allocator": allocator, "machine": machine(args.threads), **r}
    print(json.dumps(r) if args.json else format_table(r))
    return 0


def _demo(args) -> int:
    allocator = tune_allocator()  # before any large allocation, as for the bench: steadier latency ratios
    from .demo import format_demo, run_demo

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"allocator: {allocator}")
    r = run_demo(args.out, args.requests or None, checkpoint=args.checkpoint, force=args.force,
                 threads=args.threads, log=log, data_dir=args.data_dir, repeats=args.repeats)
    print(format_demo(r, args.out))
    return 0


def _ablate(args) -> int:
    from ..research.ablate import run_ablation

    if not args.quick and not args.config:
        raise ValueError("give --config configs/ablation_fmnist.toml (or --quick for the tiny smoke run)")
    r = run_ablation(args.config, args.out, quick=args.quick, force=args.force, seed=args.seed,
                     threads=args.threads,
                     log=lambda m: print(m, file=sys.stderr, flush=True), progress=sys.stderr.isatty())
    print(json.dumps(r))
    return 0


def _data_fmnist_png(args) -> int:
    from ..data.datasets import write_fashion_mnist_folder

    if Path(args.out).exists():
        raise ValueError(f"{args.out} exists; it is left as it is: choose a new --out folder")
    classes = [c for c in args.classes.split(",") if c.strip()] if args.classes else None
    counts = write_fashion_mnist_folder(args.out, args.limit, args.data_dir, per_class=args.per_class,
                                        classes=classes, val_per_class=args.val_per_class)
    print(f"wrote {counts['train']:,} training" + (f", {counts['val']:,} validation" if "val" in counts else "")
          + f" and {counts['test']:,} test images to {args.out}")
    return 0


def _data_glyphs(args) -> int:
    from ..data.glyphs import DEFAULT_FONT_DIRS, build_glyphs

    fonts = list(args.fonts or [])
    if args.font_list:
        with open(args.font_list) as f:
            fonts += [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    fonts = fonts or [d for d in DEFAULT_FONT_DIRS if os.path.isdir(d)]
    if not fonts:
        raise ValueError("no font folder found: install the pinned font packages (make glyphs) or pass --fonts "
                         "FILE|DIR")
    card = build_glyphs(args.out, fonts, seed=args.seed, per_glyph=args.per_glyph, all_test=args.all_test,
                        force=args.force, progress=sys.stderr.isatty(),
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"out": args.out, "images": card["images"], "skipped": card["skipped"],
                      "faces": {k: len(v) for k, v in card["faces"].items()}}))
    return 0


def _serve(args) -> int:
    import os

    from ..serve.app import serve  # the serve extra (fastapi, uvicorn) is needed here only

    if args.cache_size < 1:
        raise ValueError(f"--cache-size must be at least 1 subnet, got {args.cache_size}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}")
    if args.token is not None and args.token_file is not None:
        raise ValueError("give --token or --token-file, not both")
    if args.token_file is not None:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise ValueError(f"--token-file {args.token_file}: {e.strerror}") from None
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty; put the token in it")
    else:
        token = args.token if args.token is not None else os.environ.get("HYPERSAN_SERVE_TOKEN") or None
    serve(args.checkpoint, args.host, args.port, token, args.cache_dir, args.cache_size, args.data_dir,
          args.max_body_bytes, args.max_images, log=lambda m: print(m, file=sys.stderr, flush=True),
          queue_size=args.queue_size, disk_items=args.disk_cache_items, disk_bytes=args.disk_cache_bytes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypersan", description="Subtask-adaptive networks: one base net, pruned per request.")
    p.add_argument("--version", action="version", version=f"hypersan {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a base net jointly with its mask generator")
    t.add_argument("--config", required=True,
                   help="TOML experiment config: a path, or a name of hypersan's configs/ (e.g. folder, fmnist_b16)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--out", required=True, help="checkpoint directory")
    t.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    t.add_argument("--force", action="store_true", help="replace an earlier run in --out (never another folder)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept changed [train] settings (e.g. more epochs); recorded in meta.json")
    t.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: the config's); under torchrun, "
                   "auto and cuda give each process cuda:LOCAL_RANK")
    t.set_defaults(func=_train)

    r = sub.add_parser("resolve", help="ground a request in words to the class set it names (no model needed)")
    r.add_argument("text", nargs="?", default=None, help='the request, e.g. "shoes and handbags"')
    r.add_argument("--list", action="store_true", help="list the vocabulary's classes and groups, and stop")
    r.add_argument("--file", default=None, help="one request per line ('-': stdin); one result per line, in order")
    r.add_argument("--checkpoint", default=None, help="take the vocabulary from this checkpoint (default: Fashion-MNIST)")
    r.add_argument("--config", default=None, help="TOML config whose [vocab] section extends the vocabulary")
    r.add_argument("--json", action="store_true", help="print JSON (JSON Lines with --file)")
    r.add_argument("--encoder", default=None, help="sentence-transformers model name or path (default: bundled MiniLM)")
    r.add_argument("--device", default="cpu", help="device of the sentence encoder: cpu | cuda | auto")
    r.set_defaults(func=_resolve)

    e = sub.add_parser("eval", help="evaluate subtasks: accuracy, mAP and compute beside the dense net")
    e.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    e.add_argument("--subtasks", nargs="+", default=None,
                   help='class lists ("Sneaker,Bag"), seen, unseen, all, or size=K[,n=M] (default: seen unseen)')
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: final figures; val: the validation split of the training data, for choices")
    e.add_argument("--test-data", default=None, metavar="DIR",
                   help="score the test split of this dataset folder instead (same classes; BN calibration stays on "
                        "the model's own training images), e.g. glyphs rendered from your fonts with --all-test")
    e.add_argument("--limit", type=int, default=None, help="use only the first N images of the split")
    e.add_argument("--seed", type=int, default=0, help="seed of the sampled subtasks and of BN calibration")
    e.add_argument("--budget", default=None, metavar="B[,B...]",
                   help="a budget-conditioned model: MAC budgets (ratios to the dense net), e.g. 0.1,0.2,0.4; one "
                        "entry per subtask and budget (default: no limit)")
    e.add_argument("--guard", action="store_true", help=GUARD_HELP)
    e.add_argument("--finetune", type=int, default=0, metavar="STEPS",
                   help="score each class set's net after STEPS fine-tuning steps, as prune --finetune builds it")
    e.add_argument("--round-to", type=round_to_arg, default=None, metavar="N|auto",
                   help="score nets with every kept width rounded up to a multiple of N (0: the exact widths); "
                        "default: as prune builds them (the model's generator.round_to; unset: auto for a custom "
                        "network, none for the built-in ones)")
    e.add_argument("--round-mode", choices=["up", "nearest"], default="up", help="see hypersan prune --help")
    e.add_argument("--data-dir", default=None, help="Fashion-MNIST folder, if not the system one or $HYPERSAN_DATA (training images: BN calibration)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    e.add_argument("--no-cache", action="store_true", help="compute the dense net's logits again instead of reading "
                   "them from the cache ($HYPERSAN_CACHE, else ~/.cache/hypersan: the dense pass is paid once per "
                   "model and data)")
    e.set_defaults(func=_eval)

    pr = sub.add_parser("prune", help="cut the net down to a subtask and export it (safetensors, pt2, ONNX)")
    pr.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    pr.add_argument("--classes", default=None, help='class names or indices, comma-separated: "Sneaker,Bag"')
    pr.add_argument("--request", default=None, help='the subtask in words, e.g. "shoes and handbags"')
    pr.add_argument("--out", required=True, help="artifact directory (written atomically; see --force)")
    pr.add_argument("--force", action="store_true",
                    help="replace an existing hypersan artifact in --out (a folder that is not one is never replaced)")
    pr.add_argument("--format", default="safetensors,pt2",
                    help="comma-separated: safetensors, pt2 (torch.export), onnx, torchscript (legacy: deprecated "
                         "in torch); default: safetensors,pt2")
    pr.add_argument("--quantize", choices=["int8"], default=None,
                    help="also write model.int8.onnx: static INT8 (onnxruntime), calibrated on the subtask's "
                         "training images (adds the float model.onnx it is quantized from)")
    pr.add_argument("--int8-images", type=int, default=1024, metavar="N",
                    help="calibration images for --quantize (default 1024)")
    pr.add_argument("--int8-weight-bits", type=int, choices=[7, 8], default=7,
                    help="bits of the INT8 weights (default 7: the same outputs on CPUs with and without VNNI, "
                         "whose kernels can saturate with 8; 8: the full range, for VNNI CPUs)")
    pr.add_argument("--budget", default=None, metavar="B",
                    help="a budget-conditioned model: the largest MAC ratio to the dense net, e.g. 0.1 (met exactly; "
                         "a --request may also say it: 'shoes under 10%% of the compute')")
    pr.add_argument("--guard", action="store_true", help=GUARD_HELP)
    pr.add_argument("--finetune", type=int, default=0, metavar="STEPS", help=FINETUNE_HELP)
    pr.add_argument("--round-to", type=round_to_arg, default=None, metavar="N|auto",
                    help="round every kept width to a multiple of N (see --round-mode); auto: the CPU's vector block "
                         "(16 with AVX-512, else 8); default: the model's generator.round_to, unset: auto for a "
                         "custom network, none for the built-in ones")
    pr.add_argument("--round-mode", choices=["up", "nearest"], default="up",
                    help="up: add back channels (exact); nearest: may also drop the lowest-utility kept channels")
    pr.add_argument("--fold-bn", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    pr.add_argument("--keep-bn", action="store_true",
                    help="keep BatchNorm layers (default: fold them into the convs, the faster inference form)")
    pr.add_argument("--data-dir", default=None, help="training images, if the subtask needs BN recalibration")
    pr.add_argument("--device", default="cpu", help="auto | cpu | cuda[:N]")
    pr.set_defaults(func=_prune)

    d = sub.add_parser("demo", help="the main job on the shipped model: ground requests, prune, measure, export")
    d.add_argument("requests", nargs="*", help='requests in words (default, Fashion-MNIST: "sneakers and bags" '
                                                '"shoes" "tops and outerwear"; glyphs: "digits" "capital letters '
                                                'and digits" "Greek letters")')
    d.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    d.add_argument("--out", default="hypersan-demo", help="output folder (default: hypersan-demo; written atomically)")
    d.add_argument("--force", action="store_true", help="replace an earlier demo's folder (never another folder)")
    d.add_argument("--threads", type=int, default=2, help="torch threads for evaluation and timing (default 2)")
    d.add_argument("--repeats", type=int, default=None,  # None: demo.REPEATS (commands.py does not import torch)
                   help="timed rounds per request; the latency ratio is their median (default 7; fewer: a quicker, "
                        "noisier ratio)")
    d.add_argument("--data-dir", default=None, help="the model's data set folder, if not where its config says "
                                                    "(a relative one is also looked for in $HYPERSAN_DATA_HOME and "
                                                    "the checkout)")
    d.set_defaults(func=_demo)

    b = sub.add_parser("bench", help="time dense, masked and pruned nets side by side; build time; artifact size")
    b.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    b.add_argument("--subtasks", nargs="+", default=None,
                   help='class lists ("Sneaker,Bag"), all, or size=K[,n=M] (default: 6 pairs, 4 triples, 2 of 5, all)')
    b.add_argument("--batch", type=int, default=256, help="images per timed forward (default 256)")
    b.add_argument("--runtime", default=None, metavar="R[,R...]",
                   help="time dense vs pruned where they are deployed: eager, pt2, onnxruntime, onnxruntime-int8 "
                        "(comma-separated), at each of --batches; each runtime is called as its deployments call it "
                        "(numpy arrays in and out of onnxruntime)")
    b.add_argument("--batches", default="1,256", help="with --runtime: comma-separated batch sizes (default 1,256)")
    b.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime (default 2)")
    b.add_argument("--best-threads", default=None, metavar="N[,N...]",
                   help="with --runtime onnxruntime: run each net at each of these thread counts in the same rounds "
                        "and take the ratio at each net's fastest (a small pruned net at batch 1 may run fastest on "
                        "one thread while the dense net gains from two); e.g. 1,2")
    b.add_argument("--repeats", type=int, default=10,
                   help="timed rounds; ratios are medians of per-round ratios")
    b.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    b.add_argument("--settle", type=int, default=1, metavar="N",
                   help="in each round, call a net N times before its timed call (default 1): a net serving batch "
                        "after batch. 0 times the call right after the other net's, whose cache state it inherits "
                        "(reported beside as 'cold' in --runtime tables)")
    b.add_argument("--isa", choices=["avx2"], default=None,
                   help="run with the AVX2 kernels of torch, oneDNN and onnxruntime on an AVX-512 CPU (Linux, CPUID "
                        "faulting, a C compiler; the core stays this CPU's, so ratios tell which kernels an AVX2 "
                        "machine meets, not its times: python -m hypersan.research.isa --help)")
    b.add_argument("--round-to", type=round_to_arg, default=None, metavar="N|auto",
                   help="also time widths rounded to multiples of N (see --round-mode); with --runtime, the pruned "
                        "nets are rounded")
    b.add_argument("--budget", type=float, default=None, metavar="B",
                   help="build each class set's net within B of the dense net's MACs, as prune and eval do "
                        "(budget-conditioned models: --checkpoint fmnist_budget)")
    b.add_argument("--round-mode", choices=["up", "nearest"], default="up", help="see hypersan prune --help")
    b.add_argument("--keep-bn", action="store_true", help="time the nets with BatchNorm kept (default: folded)")
    b.add_argument("--layers", action="store_true",
                   help="where the time goes: each layer of the pruned net against the dense one (eager, BN folded, "
                        "at --batch): milliseconds, MAC and time ratios, GMAC/s, and the time a layer takes beyond "
                        "its MAC ratio (default subtask: one pair); with --runtime onnxruntime, each node of "
                        "onnxruntime's optimized graph, timed by its profiler")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--default-allocator", action="store_true",
                   help="leave glibc's malloc thresholds as they are (default: keep freed memory in the process, "
                        "so forwards do not page-fault their activations afresh; see hypersan.cli.tune_allocator)")
    b.add_argument("--seed", type=int, default=0, help="seed of the sampled subtasks, inputs and round orders")
    b.add_argument("--data-dir", default=None, help="Fashion-MNIST folder, if not the system one or $HYPERSAN_DATA (training images: BN calibration)")
    b.add_argument("--device", default="cpu", help="auto | cpu | cuda[:N]")
    b.set_defaults(func=_bench)

    a = sub.add_parser("ablate", help="hypernetwork vs per-task masks vs per-subset pruning, seen and held-out")
    a.add_argument("--config", default=None, help="ablation TOML (configs/ablation_fmnist.toml)")
    a.add_argument("--out", required=True, help="run folder; an unfinished run there is resumed")
    a.add_argument("--quick", action="store_true", help="the tiny smoke configuration (configs/ablation_tiny.toml)")
    a.add_argument("--seed", type=int, default=None,
                   help="run this seed's steps only and write no report (one process per seed can share --out; "
                        "a last run without --seed writes the reports)")
    a.add_argument("--threads", type=int, default=None,
                   help="torch threads for every step, trainings included (default: the config's train.threads); "
                        "1 per process when seeds run side by side")
    a.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    a.set_defaults(func=_ablate)

    st = sub.add_parser("study", help="the research studies: " + "; ".join(f"{k} ({v[1]})" for k, v in STUDIES.items()),
                        add_help=False)
    st.add_argument("kind", choices=list(STUDIES), help="which study; `hypersan study glyphs --help` lists its "
                                                        "options")
    st.add_argument("rest", nargs=argparse.REMAINDER, help="the study's own options (its --help lists them)")
    st.set_defaults(func=_study)

    sw = sub.add_parser("sweep", help="training runs from a plan (configs/sweeps/*.toml): lanes side by side, each "
                                      "run resumed where it stopped", add_help=False)
    sw.add_argument("rest", nargs=argparse.REMAINDER, help="the plan and options (`hypersan sweep --help`)")
    sw.set_defaults(func=_sweep)

    dp = sub.add_parser("data", help="build a data set")
    dsub = dp.add_subparsers(dest="dataset", required=True, help="the data set to build (glyphs, fashion-mnist-png)")
    g = dsub.add_parser("glyphs", help="characters rendered from real fonts: digits, Latin, Greek, Cyrillic "
                                       "(docs/DATA.md)")
    g.add_argument("--out", required=True, help="dataset folder to write (data.dataset = 'folder')")
    g.add_argument("--fonts", nargs="+", default=None, metavar="FILE|DIR",
                   help="font files or folders (default: the folders the pinned font packages install into)")
    g.add_argument("--font-list", default=None, metavar="FILE",
                   help="a text file of font paths, one per line (names may hold spaces)")
    g.add_argument("--seed", type=int, default=0, help="seed of the family split and the variations (default 0)")
    g.add_argument("--per-glyph", type=int, default=3, help="training variants of each glyph of each face "
                                                            "(default 3; validation and test: 1)")
    g.add_argument("--all-test", action="store_true", help="every face to the test split: a test set of your "
                                                           "own fonts (score with hypersan eval --test-data)")
    g.add_argument("--force", action="store_true", help="replace an existing dataset folder at --out")
    g.set_defaults(func=_data_glyphs)
    fm = dsub.add_parser("fashion-mnist-png", help="Fashion-MNIST written out as an image folder (OUT/train/<class>/"
                                                   "*.png, OUT/test/...): the layout data.dataset = 'imagefolder' reads")
    fm.add_argument("--out", required=True, help="the image folder to write (must not exist)")
    fm.add_argument("--limit", type=int, default=0, help="the first N images of each split (0: all)")
    fm.add_argument("--per-class", type=int, default=0, metavar="N",
                    help="the first N images of each class in each split (0: all): a small folder, such as 30")
    fm.add_argument("--classes", default=None, help='only these classes, comma-separated: "Sneaker,Bag,Trouser"')
    fm.add_argument("--val-per-class", type=int, default=0, metavar="N",
                    help="also write val/: the next N training images of each class (needs --per-class)")
    fm.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder, if not the system one")
    fm.set_defaults(func=_data_fmnist_png)

    sv = sub.add_parser("serve", help="serve subnets over HTTP: build, cache, download, predict (v1 and KServe V2)")
    sv.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sv.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every endpoint but the "
                                                   "health ones (default: $HYPERSAN_SERVE_TOKEN, else none)")
    sv.add_argument("--token-file", default=None, metavar="FILE",
                    help="read the token from FILE (a token given with --token shows in ps; a file or "
                         "$HYPERSAN_SERVE_TOKEN does not)")
    sv.add_argument("--cache-dir", default=None, help="folder that keeps built subnets across restarts (default: "
                                                       "a temporary folder, removed on exit)")
    sv.add_argument("--cache-size", type=int, default=32, help="subnets kept in memory, least recently used "
                                                                "dropped first (default 32)")
    sv.add_argument("--queue-size", type=int, default=16, help="builds waiting or running at once; more get 503 "
                                                                "with Retry-After (default 16)")
    sv.add_argument("--disk-cache-items", type=int, default=256, help="artifact folders kept in the cache folder, "
                                                                      "least recently used removed first (default 256); "
                                                                      "a folder whose subnet is in memory (--cache-size) "
                                                                      "is never removed, so up to that many stay")
    sv.add_argument("--disk-cache-bytes", type=int, default=1 << 30, help="bytes of artifact folders kept (default "
                                                                          "1 GiB)")
    sv.add_argument("--max-images", type=int, default=256, help="images per prediction request (default 256)")
    sv.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body (default 8 MiB)")
    sv.add_argument("--data-dir", default=None, help="Fashion-MNIST folder, if not the system one or "
                                                      "$HYPERSAN_DATA (training images: BN calibration)")
    sv.set_defaults(func=_serve)
    return p


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every write in progress is cleaned up."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hypersan` command: errors are one line on stderr (a traceback only with --debug)."""
    import signal
    import threading

    from ..config import ConfigError
    from ..info import DatasetError
    from ..io import ArtifactError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:  # the sweep's own command line takes every argument after it, --help included
        args = argparse.Namespace(command="sweep", func=_sweep, rest=argv[1:], debug=False)
    else:
        args = build_parser().parse_args(argv)
    args.argv = argv  # as given: a command that runs itself again (bench --isa) passes it on
    name = f"hypersan {args.command}"
    import warnings

    # a warning is one line for a person ("hypersan train: warning: ..."), not Python's file, line and source
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: f"{name}: warning: {message}\n"
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except (KeyboardInterrupt, Terminated) as e:
        if args.debug:
            raise
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
        print(f"{name}: {what}; nothing half-written was left behind", file=sys.stderr)
        return 130
    except (ConfigError, DatasetError, ArtifactError, ValueError, KeyError, FloatingPointError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{name}: error: {msg}", file=sys.stderr)
        return 2
    except (OSError, ImportError) as e:
        if args.debug:
            raise
        print(f"{name}: error: {_os_message(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line, and how to see more
        if args.debug:
            raise
        print(f"{name}: internal error: {type(e).__name__}: {e} (run `hypersan --debug {args.command} ...` for the "
              "traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatwarning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _os_message(e: BaseException) -> str:
    """One line for an OSError that says what to do: a full disk, a read-only or forbidden folder, a missing file."""
    import errno

    if not isinstance(e, OSError):
        return str(e)
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    hints = {errno.ENOSPC: "no space left on the device; free some space or write elsewhere (--out)",
             errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere (--out)",
             errno.EROFS: "the file system is read-only; write elsewhere (--out)",
             errno.EACCES: "permission denied; write to a folder you own (--out), or fix its permissions",
             errno.EPERM: "operation not permitted; write to a folder you own (--out)",
             errno.ENOENT: "no such file or folder; check the path"}
    return hints.get(e.errno, e.strerror or str(e)) + where


if __name__ == "__main__":
    sys.exit(main())
