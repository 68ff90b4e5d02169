"""The `hypersan` command: a thin layer over library functions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .shipped import checkpoint_help


CHECKPOINT_HELP = checkpoint_help()


def _resolve(args) -> int:
    from .config import load_config
    from .data import FASHION_MNIST
    from .grounding import Grounder, GroundingError, checkpoint_vocabulary, extend_vocabulary
    from .text import EncoderError, default_encoder

    if (args.text is None) == (args.file is None):
        raise ValueError('give either one request ("shoes and handbags") or --file FILE, not both or neither')
    info = checkpoint_vocabulary(args.checkpoint) if args.checkpoint else FASHION_MNIST
    if args.config:
        vocab = load_config(args.config).vocab
        info = extend_vocabulary(info, vocab.synonyms, vocab.groups)
    grounder = Grounder(info, lambda: default_encoder(args.encoder, args.device))  # loaded once, when first needed

    def show(g) -> str:
        if args.json:
            return json.dumps(g.to_dict())
        lines = [f"{c:<14} {g.scores[c]:.2f}" for c in g.classes]
        lines += [f'  "{m.text}" -> {"not " if m.exclude else ""}{m.target} ({m.how}, {m.score:.2f})' for m in g.matches]
        return "\n".join(lines)

    try:
        if args.text is not None:
            try:
                print(show(grounder.ground(args.text)))
            except GroundingError as e:
                print(f"hypersan resolve: {e}", file=sys.stderr)
                return 2
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


def _eval(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate, parse_subtasks
    from .model import SubtaskAdaptiveNet, resolve_checkpoint
    from .train import resolve_device

    ckpt = resolve_checkpoint(args.checkpoint)
    model = SubtaskAdaptiveNet.from_pretrained(ckpt, map_location=resolve_device(args.device))
    cfg = model.config
    data_dir = args.data_dir or cfg.data.data_dir or None
    train_x, _, _ = load_dataset(cfg.data.dataset, "train", data_dir)
    test_x, test_y, _ = load_dataset(cfg.data.dataset, "test", data_dir)
    if args.limit:
        test_x, test_y = test_x[:args.limit], test_y[:args.limit]
    subtasks = parse_subtasks(model, args.subtasks or ["seen", "unseen"], seed=args.seed)
    r = evaluate(model, test_x, test_y, train_x, subtasks, progress=not args.json and sys.stderr.isatty(), seed=args.seed)
    r = {"checkpoint": str(ckpt), **r}
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"checkpoint {ckpt}")
    print(f"dense: acc {r['dense']['acc']:.4f}  mAP {r['dense']['map']:.4f}  MACs {r['dense']['macs']:,}")
    print(f"{'classes':<44} {'seen':>5} {'acc':>7} {'dense':>7} {'mAP':>7} {'dense':>7} {'MACs':>6} {'params':>6}")
    for s in r["subtasks"]:
        name = ",".join(s["classes"])
        name = name if len(name) <= 44 else name[:41] + "..."
        print(f"{name:<44} {str(s['seen']):>5} {s['acc']:7.4f} {s['dense_acc']:7.4f} {s['map']:7.4f} "
              f"{s['dense_map']:7.4f} {s['mac_ratio']:6.3f} {s['param_ratio']:6.3f}")
    return 0


def _train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.set)
    if args.device:
        cfg.train.device = args.device
    train(cfg, args.out, resume=args.resume, log=lambda m: print(m, flush=True))
    print(f"checkpoint written to {args.out}")
    return 0


def _prune(args) -> int:
    import time

    from .export import export_subtask, parse_formats
    from .model import SubtaskAdaptiveNet, resolve_checkpoint

    t0 = time.perf_counter()
    formats = parse_formats(args.format)
    if (args.classes is None) == (args.request is None):
        raise ValueError('give exactly one of --classes "Sneaker,Bag" or --request "shoes and handbags"')
    ckpt = resolve_checkpoint(args.checkpoint)
    model = SubtaskAdaptiveNet.from_pretrained(ckpt)
    if args.data_dir:
        model.config.data.data_dir = args.data_dir
    extra, text = {}, None
    if args.request is not None:
        grounding = model.ground(args.request)  # GroundingError (a ValueError) names what was not understood
        classes: list = list(grounding.indices)
        extra = {"request": args.request, "grounding": grounding.to_dict()}
        text = model.request_text(args.request)
    else:
        classes = [int(c) if c.strip().isdigit() else c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise ValueError('--classes is empty; give class names or indices, e.g. --classes "Sneaker,Bag"')
    summary = export_subtask(model, classes, args.out, formats, round_to=args.round_to, fold_bn=not args.keep_bn,
                             round_mode=args.round_mode, text=text)
    print(json.dumps({**summary, **extra, "seconds": time.perf_counter() - t0}))
    return 0


def _bench(args) -> int:
    from .bench import DEFAULT_SUBTASKS, format_table, run_bench, tune_allocator
    from .data import load_dataset
    from .evaluate import parse_subtasks
    from .model import SubtaskAdaptiveNet, resolve_checkpoint

    allocator = "default" if args.default_allocator else tune_allocator()  # before any large allocation
    ckpt = resolve_checkpoint(args.checkpoint)
    model = SubtaskAdaptiveNet.from_pretrained(ckpt)
    cfg = model.config
    train_x, _, _ = load_dataset(cfg.data.dataset, "train", args.data_dir or cfg.data.data_dir or None)
    subtasks = parse_subtasks(model, args.subtasks or DEFAULT_SUBTASKS, seed=args.seed)
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    r = run_bench(model, subtasks, train_x, batch=args.batch, threads=args.threads, repeats=args.repeats,
                  warmup=args.warmup, round_to=args.round_to, seed=args.seed, fold_bn=not args.keep_bn,
                  round_mode=args.round_mode, log=log)
    r = {"checkpoint": str(ckpt), "allocator": allocator, **r}
    print(json.dumps(r) if args.json else format_table(r))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypersan", description="Subtask-adaptive networks: one base net, pruned per request.")
    p.add_argument("--version", action="version", version=f"hypersan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a base net jointly with its mask generator")
    t.add_argument("--config", required=True, help="TOML experiment config")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--out", required=True, help="checkpoint directory")
    t.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    t.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: the config's)")
    t.set_defaults(func=_train)

    r = sub.add_parser("resolve", help="ground a request in words to the class set it names (no model needed)")
    r.add_argument("text", nargs="?", default=None, help='the request, e.g. "shoes and handbags"')
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
    e.add_argument("--limit", type=int, default=0, help="use only the first N test images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)

    pr = sub.add_parser("prune", help="cut the net down to a subtask and export it (safetensors, TorchScript, ONNX)")
    pr.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    pr.add_argument("--classes", default=None, help='class names or indices, comma-separated: "Sneaker,Bag"')
    pr.add_argument("--request", default=None, help='the subtask in words, e.g. "shoes and handbags"')
    pr.add_argument("--out", required=True, help="artifact directory (replaced atomically)")
    pr.add_argument("--format", default="safetensors", help="comma-separated: safetensors, torchscript, onnx")
    pr.add_argument("--round-to", type=int, default=0, metavar="N",
                    help="round every kept width to a multiple of N (see --round-mode)")
    pr.add_argument("--round-mode", choices=["up", "nearest"], default="up",
                    help="up: add back channels (exact); nearest: may also drop the lowest-utility kept channels")
    pr.add_argument("--fold-bn", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    pr.add_argument("--keep-bn", action="store_true",
                    help="keep BatchNorm layers (default: fold them into the convs, the faster inference form)")
    pr.add_argument("--data-dir", default=None, help="training images, if the subtask needs BN recalibration")
    pr.set_defaults(func=_prune)

    b = sub.add_parser("bench", help="time dense, masked and pruned nets side by side; build time; artifact size")
    b.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    b.add_argument("--subtasks", nargs="+", default=None,
                   help='class lists ("Sneaker,Bag"), all, or size=K[,n=M] (default: 6 pairs, 4 triples, 2 of 5, all)')
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeats", type=int, default=10,
                   help="timed rounds; ratios are medians of per-round ratios")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--round-to", type=int, default=0, metavar="N",
                   help="also time widths rounded to multiples of N (see --round-mode)")
    b.add_argument("--round-mode", choices=["up", "nearest"], default="up", help="see hypersan prune --help")
    b.add_argument("--keep-bn", action="store_true", help="time the nets with BatchNorm kept (default: folded)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--default-allocator", action="store_true",
                   help="leave glibc's malloc thresholds as they are (default: keep freed memory in the process, "
                        "so forwards do not page-fault their activations afresh; see hypersan.bench.tune_allocator)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--data-dir", default=None)
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hypersan` command."""
    from .config import ConfigError
    from .data import DatasetError
    from .io import ArtifactError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, ArtifactError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hypersan {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
